"""The CLI entry points set ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless the user set it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jemkit.entry import ENV_DEFAULTS, apply_env_defaults

ROOT = Path(__file__).resolve().parents[1]

#: Records OMP_WAIT_POLICY at the moment torch is first imported, then runs the CLI as ``LAUNCH``
#: says and writes what it saw to the file named by argv[1].
PROBE = r"""
import importlib.abc, json, os, runpy, sys

class Probe(importlib.abc.MetaPathFinder):
    seen = "torch never imported"

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and Probe.seen == "torch never imported":
            Probe.seen = os.environ.get("OMP_WAIT_POLICY", "<unset>")
        return None

out, launch = sys.argv[1], sys.argv[2]
torch_before = "torch" in sys.modules
sys.meta_path.insert(0, Probe())
sys.argv = ["jemkit", "list-plugins", "--json", "sgld"]
try:
    if launch == "module":  # python -m jemkit
        runpy.run_module("jemkit", run_name="__main__", alter_sys=True)
    else:  # the console script: `from MODULE import FUNC; sys.exit(FUNC())`
        module, func = launch.split(":")
        sys.exit(getattr(__import__(module, fromlist=[func]), func)())
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "torch_before": torch_before, "at_torch_import": Probe.seen,
               "final": os.environ.get("OMP_WAIT_POLICY")}, f)
"""


def _console_script_target() -> str:
    """``module:function`` of ``jemkit`` under ``[project.scripts]`` (a regex: no tomllib on Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^jemkit\s*=\s*"([^"]+)"', scripts, re.MULTILINE)
    assert match, "pyproject.toml declares no `jemkit` console script"
    return match.group(1)


def _probe(tmp_path: Path, launch: str, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = tmp_path / "probe.json"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), launch],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.exists(), result.stderr
    seen = json.loads(out.read_text())
    assert seen["code"] == 0, result.stderr
    assert not seen["torch_before"]
    return seen


def test_apply_env_defaults_sets_only_missing_variables():
    env: dict[str, str] = {}
    assert apply_env_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"} == ENV_DEFAULTS
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_env_defaults(env) == {}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_console_script_goes_through_the_entry_module():
    assert _console_script_target() == "jemkit.entry:main"


@pytest.mark.parametrize("launch", ["module", "console"])
def test_cli_sets_passive_before_torch_is_imported(tmp_path, launch):
    target = "module" if launch == "module" else _console_script_target()
    seen = _probe(tmp_path, target, policy=None)
    assert seen["at_torch_import"] == "PASSIVE"
    assert seen["final"] == "PASSIVE"


def test_cli_keeps_a_user_set_policy(tmp_path):
    seen = _probe(tmp_path, "module", policy="ACTIVE")
    assert seen["at_torch_import"] == "ACTIVE"
    assert seen["final"] == "ACTIVE"


def test_importing_jemkit_as_a_library_leaves_the_policy_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, jemkit, jemkit.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_nproc_workers_inherit_the_policy(monkeypatch, tmp_path):
    """``jemkit run --nproc`` passes the default to torchrun even when ``cli.main`` runs in-process."""
    from jemkit.cli import main

    calls = []

    def fake_call(command, env=None):
        calls.append((command, env))
        return 0

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(subprocess, "call", fake_call)
    recipe = ROOT / "recipes" / "baseline_digits.yaml"
    assert main(["run", str(recipe), "--nproc", "2", "--out", str(tmp_path / "r")]) == 0
    (command, env), = calls
    assert command[1:3] == ["-m", "torch.distributed.run"] and "jemkit" in command
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ  # the parent's own environment is untouched

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    calls.clear()
    assert main(["run", str(recipe), "--nproc", "2", "--out", str(tmp_path / "s")]) == 0
    assert calls[0][1]["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_stop_signal_after_the_command_finished_does_not_change_its_exit_code():
    """Once the command returned, SIGTERM is ignored: in interpreter teardown Python restores the
    default handler, and a late SIGTERM used to end a finished, fully written run with exit -15."""
    script = (
        "import os, signal, sys, time\n"
        "from jemkit.entry import main\n"
        "code = main(['list-plugins', '--json', 'sgld'])\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["name"] == "sgld"
