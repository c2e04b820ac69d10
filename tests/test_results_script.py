"""scripts/results.py (docs/results.md over seeds, the claims verdicts) and
benchmarks/time_to_quality.py: the decision rule on hand-made numbers, and both scripts end to
end on a tiny setting (``slow``)."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def _load(name: str, relative: str):
    """Import a script by path (scripts/ and benchmarks/ are folders of scripts, not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def results():
    return _load("jemkit_script_results", "scripts/results.py")


# ---------------------------------------------------------------------- the rule, by hand
def test_welch_matches_a_hand_computation():
    r = results()
    # a = 1, 2, 3 and b = 4, 5, 6: both sd 1, so se = sqrt(1/3 + 1/3), t = -3 / se = -3.674,
    # Welch-Satterthwaite dof = (2/3)^2 / (2 * (1/3)^2 / 2) = 4, t(0.975, 4) = 2.776445.
    difference, low, high, p = r.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = 2.776445 * math.sqrt(2 / 3)
    assert difference == pytest.approx(-3.0)
    assert low == pytest.approx(-3.0 - half, abs=1e-5) and high == pytest.approx(-3.0 + half, abs=1e-5)
    assert p == pytest.approx(0.0213116, abs=1e-6)
    # unequal spreads and sizes: the same as scipy's Welch test
    from scipy import stats

    a, b = [0.91, 0.95, 0.93, 0.97, 0.90], [0.80, 0.99, 0.85]
    reference = stats.ttest_ind(a, b, equal_var=False)
    difference, low, high, p = r.welch(a, b)
    assert p == pytest.approx(reference.pvalue, rel=1e-9)
    ci = reference.confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    with pytest.raises(ValueError):
        r.welch([1.0], [2.0, 3.0])


def test_better_verdict_holds_does_not_hold_not_significant():
    r = results()
    jem_auroc = [0.999, 1.000, 0.998, 1.000, 0.999]
    base_auroc = [0.978, 0.961, 0.985, 0.970, 0.952]
    held = r.better_verdict(jem_auroc, base_auroc, higher_is_better=True)
    assert held.verdict == r.HOLDS
    assert held.difference == pytest.approx(0.9992 - 0.9692) and held.p_value < 0.01
    assert held.ci_low > 0 and (held.n_method, held.n_baseline) == (5, 5)
    # the same numbers, read as "lower is better" (e.g. ECE): significant the wrong way
    assert r.better_verdict(jem_auroc, base_auroc, higher_is_better=False).verdict == r.DOES_NOT_HOLD
    # JEM's ECE 0.050-0.054 against the baseline's 0.012-0.016 (issue 17): better calibration does not hold
    ece = r.better_verdict([0.050, 0.054, 0.052, 0.051, 0.053], [0.012, 0.016, 0.015, 0.013, 0.014], False)
    assert ece.verdict == r.DOES_NOT_HOLD and ece.difference == pytest.approx(0.038)
    # overlapping seeds: p well above 0.05
    noisy = r.better_verdict([0.87, 0.74, 0.81, 0.90, 0.72], [0.85, 0.80, 0.76, 0.88, 0.79], True)
    assert noisy.verdict == r.NOT_SIGNIFICANT and noisy.p_value > 0.5
    assert noisy.ci_low < 0 < noisy.ci_high


def test_verdict_edge_cases():
    r = results()
    one = r.better_verdict([0.99], [0.5, 0.6], True)
    assert one.verdict == r.NOT_SIGNIFICANT and one.p_value is None and one.difference == pytest.approx(0.44)
    assert r.better_verdict([], [0.5, 0.6], True).verdict == r.NOT_MEASURED
    # no spread on either side: the difference is exact
    exact = r.better_verdict([0.3, 0.3], [0.1, 0.1], True)
    assert exact.verdict == r.HOLDS and exact.p_value == 0.0 and exact.ci_low == pytest.approx(0.2)
    assert r.better_verdict([0.3, 0.3], [0.3, 0.3], True).verdict == r.NOT_SIGNIFICANT


def test_close_verdict_is_non_inferiority_within_the_margin():
    r = results()
    close = r.close_verdict([0.980, 0.985, 0.982, 0.984, 0.983], [0.981, 0.983, 0.984, 0.980, 0.985], margin=0.01)
    assert close.verdict == r.HOLDS and close.ci_low > -0.01
    worse = r.close_verdict([0.930, 0.941, 0.935, 0.938, 0.933], [0.981, 0.978, 0.983, 0.980, 0.979], margin=0.01)
    assert worse.verdict == r.DOES_NOT_HOLD and worse.ci_high < -0.01
    unclear = r.close_verdict([0.95, 0.99, 0.97, 0.96, 0.98], [0.98, 0.98, 0.975, 0.985, 0.98], margin=0.01)
    assert unclear.verdict == r.NOT_SIGNIFICANT and unclear.ci_low < -0.01 < unclear.ci_high
    # a wider margin turns the same data into "holds"
    assert r.close_verdict([0.95, 0.99, 0.97, 0.96, 0.98], [0.98, 0.98, 0.975, 0.985, 0.98], margin=0.05).verdict == r.HOLDS


def test_claims_table_reads_report_numbers():
    r = results()

    def run(acc, ece, linf, defended):
        numbers = {"eval.accuracy.clean": acc, "eval.calibration.ece": ece}
        for i, (eps, value, worst) in enumerate(zip((0.0, 0.1, 0.2), linf, defended)):
            numbers[f"eval.robustness.attacks.linf.{i}.eps"] = eps
            numbers[f"eval.robustness.attacks.linf.{i}.accuracy"] = value
            numbers[f"eval.robustness.defended.linf.{i}.eps"] = eps
            numbers[f"eval.robustness.defended.linf.{i}.worst"] = worst
        return numbers

    base = [run(0.98, 0.015, (0.98, 0.85, 0.52), (0.98, 0.86, 0.50)), run(0.981, 0.013, (0.981, 0.86, 0.50), (0.98, 0.86, 0.51))]
    jem = [run(0.983, 0.050, (0.983, 0.90, 0.70), (0.97, 0.84, 0.60)), run(0.982, 0.052, (0.982, 0.91, 0.69), (0.97, 0.83, 0.61))]
    tests = r.claims([], ["linf"])
    lines, outcomes = r.claims_table(tests, {"jem": jem, "base": base}, ["jem"], "base")
    verdicts = {claim.claim: verdict for claim, _, verdict in outcomes}
    # mean over eps > 0 only: JEM (0.905 + 0.695) / 2 = 0.80 against (0.855 + 0.51) / 2 = 0.6825
    undefended = verdicts["more robust without refinement"]
    assert undefended.difference == pytest.approx(0.80 - 0.6825) and undefended.verdict == r.HOLDS
    assert verdicts["better calibration"].verdict == r.DOES_NOT_HOLD
    assert verdicts["class-conditional generation"].verdict == r.NOT_MEASURED
    assert len(lines) == 2 + len(tests)
    assert all(re.search(r"\| \*\*(holds|does not hold|not significant|not measured)\*\* \|$", line) for line in lines[2:])


# ---------------------------------------------------------------------- end to end, tiny
@pytest.mark.slow
def test_results_and_time_to_quality_scripts_tiny(tmp_path):
    out = tmp_path / "results.md"
    common = ["--tiny", "--recipes", "baseline,jem", "--seeds", "1,2", "--jobs", "2"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "results.py"), *common, "--runs-dir", str(tmp_path / "runs"), "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "`baseline_digits` n = 2, `jem_digits` n = 2" in text
    for title in ("## Claims", "## Accuracy and calibration", "## OOD detection", "## Robust accuracy", "## Generation", "## Wall time"):
        assert title in text
    claim_rows = [line for line in text.splitlines() if line.startswith("| ") and "| jem_digits |" in line and "**" in line]
    claims = {row.split(" | ")[0][2:] for row in claim_rows}
    assert claims == {  # one row per claim and measure, each with a verdict
        "accuracy close to the baseline", "better calibration", "better OOD detection with log p(x)",
        "better OOD detection with grad-norm", "more robust without refinement", "more robust with SGLD refinement",
        "class-conditional generation",
    }
    assert len(claim_rows) == 16, text  # 2 + 4 OOD sets x 2 scores + 2 norms x 2 + 2 generation
    for row in claim_rows:
        assert "| 2, 2 |" in row and re.search(r"\*\*(holds|does not hold|not significant)\*\* \|$", row), row
    # every metric row of the topic tables has a number for both recipes (n = 2: mean ± sd [CI])
    assert re.search(r"\| test accuracy \| [\d.]+ ± [\d.]+ \[.+\] \| [\d.]+ ± [\d.]+ \[.+\] \|", text), text
    assert "| metric | group | n | mean ± sd | 95% CI |" in (tmp_path / "results_compare.md").read_text(encoding="utf-8")
    # it wrote only into tmp_path, never docs/results.md (a hash of that file would race with
    # other people's edits of the shared working tree)
    assert f"wrote {out} and {tmp_path / 'results_compare.md'}" in done.stdout

    # a second call resumes: nothing to train or evaluate, the same tables
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "results.py"), *common, "--runs-dir", str(tmp_path / "runs"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0 and "[eval]" not in again.stdout and "jemkit run" not in again.stdout, again.stdout + again.stderr

    ttq = tmp_path / "ttq.md"
    script = [sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), *common, "--runs-dir", str(tmp_path / "ttq")]
    done = subprocess.run([*script, "--out", str(ttq), "--acc", "0", "--sample-acc", "0"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in ttq.read_text(encoding="utf-8").splitlines() if line.startswith("| baseline") or line.startswith("| jem")}
    assert set(rows) == {"baseline", "jem"}, ttq.read_text(encoding="utf-8")
    for cells in rows.values():
        assert cells[2:4] == ["2", "2"], cells  # n = 2 seeds, both reached the (zero) thresholds
        assert float(cells[4]) > 0, cells  # a median wall time in seconds
    # thresholds no tiny run reaches: "not reached", from the same runs (nothing trained again)
    never = tmp_path / "never.md"
    done = subprocess.run([*script, "--out", str(never), "--acc", "1.01"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "jemkit run" not in done.stdout, done.stdout + done.stderr
    assert sum("| 2 | 0 | not reached |" in line for line in never.read_text(encoding="utf-8").splitlines()) == 2

    # scripts/refine_sweep.py on the same sweeps: step 0 without noise leaves every input as it is
    refine_md = tmp_path / "refine.md"
    refine = [sys.executable, str(ROOT / "scripts" / "refine_sweep.py"), "--recipes", "baseline,jem",
              "--runs-dir", str(tmp_path / "runs"), "--steps", "run,0", "--noise", "0", "--refine-steps", "2",
              "--jobs", "2", "--out", str(refine_md)]
    done = subprocess.run(refine, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(" | ") for line in refine_md.read_text(encoding="utf-8").splitlines() if line.startswith("| ") and "_digits" in line]
    assert [(r[0][2:], r[1], r[2]) for r in rows] == [
        ("baseline_digits", "the run's own transition", "2"), ("baseline_digits", "SGLD step 0, noise 0", "2"),
        ("jem_digits", "the run's own transition", "2"), ("jem_digits", "SGLD step 0, noise 0", "2"),
    ], rows
    for r in rows:
        if "step 0" in r[1]:
            assert r[3] == r[4] and r[5].startswith("0 ± 0"), r  # refined = clean exactly
    again = subprocess.run(refine, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[refine]" not in again.stdout, again.stdout + again.stderr
    bad = subprocess.run([*refine[:2], "--steps", "fast", "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps" in bad.stderr and "Traceback" not in bad.stderr
