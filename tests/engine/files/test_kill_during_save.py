"""Saves that survive a kill and a full disk. A child process saves a project (or exports ONNX) version
after version to one path and is SIGKILLed after a random delay, many times; after each kill the file on
disk must be the old version or the new one, whole (every zip CRC, the recipe and the weights agree; the
ONNX file checks and computes its version's output), never a mix. ``GRAFT_KILL_ROUNDS`` sets how many kills
(default a few, to keep the suite fast). A full disk (a real small tmpfs when root, else an injected
ENOSPC) gives a GraftError naming the disk, and the old file stays as it was."""
from __future__ import annotations

import errno
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.errors import GraftError

CHILD = Path(__file__).with_name("kill_child.py")
ROUNDS = int(os.environ.get("GRAFT_KILL_ROUNDS", "0"))


class Child:
    """The zygote process of kill_child.py, with its output lines read in a thread (never a blocked read)."""

    def __init__(self, mode: str, path: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(CHILD), mode, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout: float = 120.0) -> tuple[str, list[str]]:
        """Wait for a line starting with ``prefix``; returns it and the lines before it."""
        before, end = [], time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            if line.startswith(prefix):
                return line, before
            before.append(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def project_version(path: Path) -> int:
    """The version a project file holds, after checking it is whole: every member's CRC, the recipe and the
    weights readable, and the recipe's version the one the weights carry."""
    from engine.project.project_file import read_project

    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, "a member's CRC does not match"
    recipe, weights = read_project(path)
    version = recipe["extra"]["version"]
    biases = [v for k, v in weights.items() if k.startswith("heads.v.") and k.endswith(".bias")]
    assert len(biases) == 1 and float(biases[0][0]) == float(version), "recipe and weights from different saves"
    return version


def onnx_output(path: Path) -> float:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    return float(sess.run(None, feed)[0].ravel()[0])


def kill_many(tmp_path: Path, mode: str, rounds: int, max_delay: float, more_until_mid_write: int = 0) -> dict[str, int]:
    """Kill the writer ``rounds`` times, checking the file after each kill; with ``more_until_mid_write``,
    up to that many more kills while none has yet landed inside a save (on a busy machine the writer's
    time before it writes stretches, and a dozen kills can all land there)."""
    name = "p.graft" if mode == "project" else "m.onnx"
    path = tmp_path / name
    child = Child(mode, path)
    rng = random.Random(25)
    stats = {"kills": 0, "files_checked": 0, "mid_write": 0, "old": 0, "new": 0}
    try:
        child.expect("ready")
        base = onnx_output(path) if mode == "export" else 0.0

        def version() -> int:
            if mode == "project":
                return project_version(path)
            out = onnx_output(path) - base
            assert abs(out - round(out)) < 1e-3, f"output {out} is no version's"
            return round(out)

        on_disk = version()
        assert on_disk == 0
        for r in range(rounds + more_until_mid_write):
            if r >= rounds and stats["mid_write"]:
                break
            child.proc.stdin.write("go\n")
            child.proc.stdin.flush()
            pid = int(child.expect("pid")[0].split()[1])
            time.sleep(rng.uniform(0.0, max_delay))
            os.kill(pid, signal.SIGKILL)
            _, lines = child.expect("dead")
            stats["kills"] += 1
            saved = [int(line.split()[1]) for line in lines if line.startswith("saved")]
            old = saved[-1] if saved else on_disk
            new = old + 1 if saved else r * 1000 + 1
            temps = list(tmp_path.glob(f".{name}.*.tmp"))
            stats["mid_write"] += bool(temps)
            for t in temps:
                t.unlink()
            got = version()
            stats["files_checked"] += 1
            assert got in (old, new), f"kill {r}: the file holds version {got}, neither the old {old} nor the new {new}"
            stats["old" if got == old else "new"] += 1
            on_disk = got
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing but the file (temps removed above)
    finally:
        child.close()
    print(f"\n{mode}: {stats}")
    return stats


@pytest.mark.slow
def test_a_killed_project_save_leaves_the_old_file_or_the_new_one(tmp_path):
    stats = kill_many(tmp_path, "project", ROUNDS or 12, max_delay=0.8, more_until_mid_write=36)
    assert stats["files_checked"] == stats["kills"]
    assert stats["mid_write"] > 0  # the kills did land inside saves, not only between them


@pytest.mark.slow
def test_a_killed_export_leaves_the_old_file_or_the_new_one(tmp_path):
    stats = kill_many(tmp_path, "export", max(2, ROUNDS // 4) if ROUNDS else 4, max_delay=4.0)
    assert stats["files_checked"] == stats["kills"]


# -- a full disk ---------------------------------------------------------------------------------------------


@pytest.fixture
def session():
    sys.path.insert(0, str(CHILD.parent))
    import kill_child

    s = kill_child.build()
    sys.path.remove(str(CHILD.parent))
    return s


def _write(session, mode: str, path: Path, k: int) -> None:
    import kill_child

    kill_child.write(session, mode, path, k)


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs (root only): a real disk that fills up."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("mode", ["project", "export"])
def test_a_full_disk_says_so_and_keeps_the_old_file(session, small_disk, mode):
    path = small_disk / ("p.graft" if mode == "project" else "m.onnx")
    _write(session, mode, path, 1)
    good = path.read_bytes()
    filler = small_disk / "filler"  # leave less room than one more copy of the file needs
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - len(good) // 2))
    with pytest.raises(GraftError) as caught:
        _write(session, mode, path, 2)
    message = str(caught.value)
    assert "disk" in message and "full" in message and str(small_disk) in message, message
    assert path.read_bytes() == good
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([path.name, "filler"])  # no temp left


@pytest.mark.parametrize("mode", ["project", "export"])
def test_an_injected_enospc_says_so_and_keeps_the_old_file(session, tmp_path, monkeypatch, mode):
    """The same without root: the write of the file's bytes fails as a full disk makes it fail."""
    import engine.files as files

    path = tmp_path / ("p.graft" if mode == "project" else "m.onnx")
    _write(session, mode, path, 1)
    good = path.read_bytes()
    real = files._fsync

    def full(p, folder=False):  # the data reached the page cache, but the disk has no room for it
        if not folder:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(p, folder)

    monkeypatch.setattr(files, "_fsync", full)
    with pytest.raises(GraftError, match=r"the disk holding .* is full") as caught:
        _write(session, mode, path, 2)
    assert str(tmp_path) in str(caught.value)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
