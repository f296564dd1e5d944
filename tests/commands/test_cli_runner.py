"""``cli_runner.run_cli``: the command line in this process gives what a child process gives, and leaves this
process as it found it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch

from cli_runner import MAIN, ROOT, run_cli


def child(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAIN), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args", [
    ["layers", "--depth", "-1"],  # a GraftError: one line, exit 1 (no torch needed on the way)
    ["train", "--epochs", "many"],  # argparse: usage and exit 2 (SystemExit)
    ["nonsense-command"],
    ["predict", "--help"],  # SystemExit(0) with the help on stdout
])
def test_the_same_status_and_text_as_a_child(args):
    mine, theirs = run_cli(*args), child(*args)
    assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert mine.args[1:] == theirs.args[1:]


def test_descriptor_level_output_an_escaping_exception_and_warnings(monkeypatch):
    import commands.layers

    def run(args):
        print("from python")
        os.write(1, b"from the descriptor\r\n")  # as C++ code prints; \r\n read as text=True reads it
        os.write(2, b"c++ warning\n")
        warnings.warn("a warning a child prints", UserWarning)
        warnings.warn("a deprecation a child hides", DeprecationWarning)
        raise RuntimeError("nobody caught this")

    monkeypatch.setattr(commands.layers, "run", run)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        result = run_cli("layers")
    assert recorded == []  # shown on the run's stderr, as a child shows it, not recorded here
    assert result.returncode == 1
    assert result.stdout == "from python\nfrom the descriptor\n"
    err = result.stderr
    assert err.startswith("c++ warning\n") and "UserWarning: a warning a child prints" in err
    assert "deprecation" not in err
    assert "Traceback (most recent call last)" in err and err.endswith("RuntimeError: nobody caught this\n")


def test_the_process_is_left_as_it_was(monkeypatch, tmp_path):
    import commands.layers

    seen = {}

    def run(args):
        seen.update(cwd=os.getcwd(), env=dict(os.environ), threads=torch.get_num_threads(),
                    seed=torch.initial_seed(), argv=list(sys.argv))
        os.environ["LEFT_BEHIND"] = "1"
        os.chdir("/")
        torch.set_num_threads(3)
        torch.manual_seed(5)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.path.insert(0, "/nowhere")
        warnings.simplefilter("error")
        return 0

    monkeypatch.setattr(commands.layers, "run", run)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    before = (os.getcwd(), dict(os.environ), torch.get_num_threads(), signal.getsignal(signal.SIGINT),
              list(sys.path), list(sys.argv), list(warnings.filters))
    result = run_cli("layers", cwd=tmp_path, env={"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1", "ONLY": "x"})
    assert result.returncode == 0, result.stderr
    assert seen["cwd"] == str(tmp_path) and seen["env"] == {"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1",
                                                            "ONLY": "x"}
    assert seen["threads"] == 1 and seen["seed"] != 1 and seen["argv"] == [str(MAIN), "layers"]
    assert (os.getcwd(), dict(os.environ), torch.get_num_threads(), signal.getsignal(signal.SIGINT),
            list(sys.path), list(sys.argv), list(warnings.filters)) == before
    assert torch.equal(torch.rand(3), expected)  # the random state too


@pytest.mark.slow
@pytest.mark.parametrize("command", ["script", "explain", "diff"])
def test_a_missing_project_is_one_line_here_and_in_a_child(command, tmp_path):
    """The subcommands whose other tests all run here: in a real process too, one line and status 1 (and the
    same as here)."""
    missing = tmp_path / "missing.graft"
    args = {"script": [missing, "--out", tmp_path / "s.py"],
            "explain": [missing, tmp_path / "x.png", "--out", tmp_path / "maps"],
            "diff": [missing, missing]}[command]
    mine, theirs = run_cli(command, *args), child(command, *map(str, args))
    assert theirs.returncode == 1 and theirs.stderr.count("\n") == 1, theirs.stderr
    assert theirs.stderr.startswith("graft: error: ") and "missing.graft" in theirs.stderr
    assert (mine.returncode, mine.stdout, mine.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
