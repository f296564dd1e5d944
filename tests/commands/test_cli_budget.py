"""``main.py train --budget``: the plan shown before it runs, the run inside the time, the stages in ``runs``."""
from __future__ import annotations

import re
import time

import pytest

from tests.commands.test_cli_train import graft, graft_child

SMALL = ("--model", "mobilenet_v3_small", "--random-weights", "--input-size", "64", "--batch-size", "8")


@pytest.mark.slow
def test_budget_shows_the_plan_trains_inside_the_time_and_runs_lists_its_stages(tiny_folder, tmp_path):
    out = tmp_path / "b.graft"
    budget = 60
    t0 = time.monotonic()
    # a real process: the time it keeps to is the whole command's, Python's start included
    result = graft_child("train", "--data", str(tiny_folder), *SMALL, "--budget", f"{budget}s", "--out", str(out))
    wall = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    text = result.stdout
    plan = text.index("Plan for 1:00")
    assert plan < text.index("-- Stage 1/")  # the plan comes before anything trains
    assert "estimate" in text and "frozen" in text and "the whole trunk" in text
    assert text.count("Small data (under") == 1  # the plan's notes, once, with the plan
    assert "kept" in text and out.is_file()
    assert wall <= budget * 1.1, text  # the whole command, Python's start included
    runs = graft("runs", str(out))
    assert runs.returncode == 0, runs.stderr
    assert "Run 1, by stage:" in runs.stdout and re.search(r"\d\. heads ", runs.stdout) and "estimate" in runs.stdout
    assert re.search(r"\(\d+ stages?, budget 1:00\)", runs.stdout)


@pytest.mark.slow
def test_a_budget_too_short_or_options_the_plan_chooses_are_refused_in_one_line(tiny_folder, tmp_path):
    short = graft("train", "--data", str(tiny_folder), *SMALL, "--budget", "1s", "--out", str(tmp_path / "a"))
    assert short.returncode == 1
    assert short.stderr.strip().count("\n") == 0 and "too short" in short.stderr
    assert not (tmp_path / "a.graft").exists()
    fixed = graft("train", "--data", str(tiny_folder), *SMALL, "--budget", "2m", "--epochs", "3")
    assert fixed.returncode == 1 and "leave out --epochs" in fixed.stderr
    bad = graft("train", "--data", str(tiny_folder), "--budget", "soon")
    assert bad.returncode == 1 and "90s, 10m" in bad.stderr
    refit = graft("train", "--data", str(tiny_folder), "--refit", "--epochs", "1")
    assert refit.returncode == 1 and "--refit goes with --budget" in refit.stderr
