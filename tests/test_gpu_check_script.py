"""The prepared GPU check (benchmarks/gpu_check.sh) in its CPU smoke mode.

A lent GPU gives a session about 15 minutes, so the script must work the first time: this runs
every step of it on CPU with a tiny network (about 45 s) and checks what it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="needs bash")


def test_gpu_check_script_smoke_run_writes_every_result(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_SMOKE": "1", "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["check.log", "env.txt", "gpu_tests.log", "levers.json", "levers.txt", "summary.md"]
    assert len(files) <= 8, "the device tool returns at most 8 files"
    levers = json.loads((out / "levers.json").read_text())
    assert [r["lever"] for r in levers][:2] == ["reference: performance levers off, weights frozen while sampling", "weights NOT frozen while sampling"]
    assert all(r["jem_iteration_ms"] > 0 and r["K"] == 2 for r in levers)
    summary = (out / "summary.md").read_text()
    assert summary.count("| run-default | completed | 4 |") == 1 and summary.count("| run-fast | completed | 4 |") == 1
    assert "h / 150 epochs" in summary and "no CUDA device" in summary
    assert "skipped" in (out / "gpu_tests.log").read_text()  # no CUDA here: the gpu tests skip, not fail
