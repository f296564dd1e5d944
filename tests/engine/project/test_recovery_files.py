"""Recovery files (engine/project/recovery.py): what they hold opens as the project it was, the writer's
thread keeps the newest state and never leaves a partial file, and discarding removes it."""
from __future__ import annotations

import threading
import time
import zipfile

import pytest
import torch

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.project.project_file import open_project
from engine.project.recovery import (RecoveryInfo, RecoveryWriter, capture, read_recovery, recovery_files,
                                     recovery_folder, write_recovery)
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer


@pytest.fixture
def edited(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(CutAt("layer3"))
    s.do(AddHead(HeadSpec("shape", "single", labels=["circle", "square"])))
    with torch.no_grad():  # weights no replay of the recipe gives: trained ones
        for p in s.model.heads.parameters():
            p.add_(0.25)
    return s


def same_state(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_recovery_file_opens_as_the_work_it_kept(edited, tmp_path):
    state = capture(edited, {"data": "/d"}, project="/p/mine.graft", data="/d", note="surgery, 3 steps")
    path = write_recovery(tmp_path / "recovery-1.graft", state)
    info = read_recovery(path)
    assert (info.project, info.data, info.note, info.model) == ("/p/mine.graft", "/d", "surgery, 3 steps",
                                                                edited.describe())
    assert abs(info.saved_at - time.time()) < 60
    reopened = open_project(path)
    assert reopened.recipe() == edited.recipe() and [h.name for h in reopened.heads] == ["shape"]
    assert same_state(reopened, edited)
    assert reopened.project_extra == {"data": "/d"}


def test_capture_takes_references_and_the_write_copies(edited, tmp_path):
    state = capture(edited)
    key = "heads.shape.linear.weight" if "heads.shape.linear.weight" in state.weights else next(
        k for k in state.weights if k.startswith("heads."))
    assert state.weights[key].data_ptr() == edited.model.state_dict()[key].data_ptr()  # no copy on the caller
    path = write_recovery(tmp_path / "r.graft", state)
    with torch.no_grad():
        edited.model.state_dict()[key].add_(1.0)  # changed after the write: the file keeps what it wrote
    assert not same_state(open_project(path), edited)


def test_the_question_names_the_time(tmp_path):
    at = time.mktime((2026, 12, 7, 10, 42, 5, 0, 0, -1))
    info = RecoveryInfo(tmp_path / "r.graft", at, 1, None, None, "resnet18", "")
    assert info.question(now=at + 3600) == "Recover the work from 10:42?"
    assert info.clock(now=at + 2 * 86400) == "Mon 7 Dec, 10:42"
    assert "resnet18 (never saved)" in info.details()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", None])
def test_damaged_or_foreign_files_say_so(tmp_path, content):
    path = tmp_path / "recovery-x.graft"
    if content is None:  # a project, but no recovery.json
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("recipe.json", "{}")
    else:
        path.write_bytes(content)
    with pytest.raises(GraftError, match="is not a Graft recovery file"):
        read_recovery(path)


def test_the_folder_lists_recovery_files_newest_first(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    assert recovery_folder() == tmp_path / "recovery" and recovery_files() == []
    folder = recovery_folder()
    folder.mkdir()
    for i, name in enumerate(("recovery-a.graft", "recovery-b.graft", "other.graft", "recovery-c.tmp")):
        (folder / name).write_bytes(b"x")
        t = 1_700_000_000 + i
        import os
        os.utime(folder / name, (t, t))
    assert [p.name for p in recovery_files()] == ["recovery-b.graft", "recovery-a.graft"]


def test_the_writer_keeps_the_newest_state_off_the_callers_thread(edited, tmp_path, monkeypatch):
    """Handing over returns at once while a write is under way; states handed over meanwhile end in one
    write of the newest; every file on disk is whole."""
    import engine.project.recovery as recovery

    gate, entered, threads = threading.Event(), threading.Event(), []
    real = recovery.write_recovery

    def slow(path, state):
        threads.append(threading.current_thread().name)
        entered.set()
        gate.wait(10)
        return real(path, state)

    monkeypatch.setattr(recovery, "write_recovery", slow)
    path = tmp_path / "recovery-w.graft"
    writer = RecoveryWriter(path)
    try:
        writer.submit(capture(edited, note="first"))
        assert entered.wait(10)
        start = time.perf_counter()
        for i in range(20):
            writer.submit(capture(edited, note=f"state {i}"))
        assert time.perf_counter() - start < 0.5 and not writer.idle  # nobody waited for the disk
        gate.set()
        assert writer.flush(30)
        assert writer.writes == 2 and read_recovery(path).note == "state 19"
        assert set(threads) == {"graft-recovery"}
    finally:
        gate.set()
        writer.close()
    assert not path.exists()  # closing removes it


def test_update_puts_best_weights_over_the_rest(edited, tmp_path):
    writer = RecoveryWriter(tmp_path / "recovery-u.graft")
    try:
        writer.update(note="nothing kept yet")  # no state: nothing to change, nothing written
        assert writer.flush(10) and writer.writes == 0
        writer.submit(capture(edited), write=False)
        best = {k: v.clone() + 1.0 for k, v in edited.model.state_dict().items() if k.startswith("heads.")
                and v.is_floating_point()}
        writer.update(best, note="training: best epoch 2 of 5")
        assert writer.flush(30)
        reopened = open_project(writer.path)
        state = reopened.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in best.items())
        trunk = [k for k in state if k.startswith("trunk.")]
        assert trunk and all(torch.equal(state[k], edited.model.state_dict()[k]) for k in trunk)
        assert read_recovery(writer.path).note == "training: best epoch 2 of 5"
    finally:
        writer.close()


def test_a_failed_write_is_reported_and_the_next_one_works(edited, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    failures = []
    writer = RecoveryWriter(blocked / "recovery-f.graft", on_failed=failures.append)
    try:
        writer.submit(capture(edited))
        assert writer.flush(30) and writer.writes == 0 and failures and writer.last_error == failures[0]
        writer.path = tmp_path / "recovery-f.graft"
        writer.submit(capture(edited))
        assert writer.flush(30) and writer.writes == 1 and writer.last_error is None
    finally:
        writer.close(remove=False)
    assert writer.path.exists()  # closed without removing


def test_discard_drops_a_pending_write_and_removes_the_file(edited, tmp_path):
    writer = RecoveryWriter(tmp_path / "recovery-d.graft")
    try:
        writer.submit(capture(edited))
        assert writer.flush(30) and writer.path.exists()
        writer.discard()
        assert not writer.path.exists()
        writer.submit(capture(edited))  # later work is kept again
        assert writer.flush(30) and writer.path.exists()
    finally:
        writer.close()
