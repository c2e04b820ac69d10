"""Plain progress lines for logs: phase k of N, done/total, an ETA, and a line at least every interval."""

from __future__ import annotations

import io
import time

import pytest

from jemkit.evaluation.progress import Steps
from jemkit.progress_lines import ProgressLines, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_name_the_phase_count_and_eta():
    out, clock = io.StringIO(), FakeClock()
    progress = ProgressLines(out, label="eval", phases=2, interval=30.0, clock=clock)
    steps = Steps(progress)
    steps.note("jem: loaded checkpoint step_000550.safetensors (step 550)")
    with steps.task("jem: PGD", 400) as advance:
        clock.now += 10
        advance(100)  # 10 s since the last line: quiet
        clock.now += 25
        advance(100)  # 35 s: a line, 200 of 400 in 35 s, so 35 s to go
    lines = out.getvalue().splitlines()
    assert lines[0] == "[eval 0:00:00] jem: loaded checkpoint step_000550.safetensors (step 550)"
    assert lines[1] == "[eval 0:00:00] phase 1/2 jem: PGD: 0/400 (0%), phase ETA unknown"
    assert lines[2] == "[eval 0:00:35] phase 1/2 jem: PGD: 200/400 (50%), phase ETA 0:00:35"
    assert lines[3] == "[eval 0:00:35] phase 1/2 jem: PGD: done in 0:00:35"
    assert len(lines) == 4


def test_more_tasks_than_planned_raise_the_count():
    out = io.StringIO()
    progress = ProgressLines(out, phases=1, clock=FakeClock())
    for name in ("a", "b"):
        task = progress.add_task(name, total=2)
        progress.remove_task(task)
    assert "phase 2/2 b: done" in out.getvalue()


def test_the_heartbeat_prints_while_one_unit_of_work_takes_long():
    out = io.StringIO()
    with ProgressLines(out, interval=0.05) as progress:
        task = progress.add_task("slow batch", total=3)
        time.sleep(0.4)  # no advance at all: the heartbeat still reports
        progress.remove_task(task)
    beats = [line for line in out.getvalue().splitlines() if "slow batch: 0/3" in line]
    assert len(beats) >= 2, out.getvalue()
    quiet = len(out.getvalue().splitlines())
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == quiet, "stopped with the context"


def test_the_heartbeat_also_speaks_between_phases():
    out = io.StringIO()
    with ProgressLines(out, phases=4, interval=0.05) as progress:
        progress.remove_task(progress.add_task("first", total=1))
        time.sleep(0.3)  # loading, writing figures: no task open
    assert "working (1/4 phases done)" in out.getvalue(), out.getvalue()


def test_format_seconds_and_bad_interval():
    assert format_seconds(3725.9) == "1:02:05" and format_seconds(-3) == "0:00:00"
    with pytest.raises(ValueError, match="interval"):
        ProgressLines(io.StringIO(), interval=0)
