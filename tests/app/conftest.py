"""App fixtures: QSettings in a temporary folder, QMessageBox answered by the test, file dialogs that
cancel unless a test plans them, and a main window that ends its work before closing.

Every static QMessageBox call is recorded in ``boxes.calls`` as (kind, title, text); ``boxes.answers``
gives the button a ``question`` returns (by default its default button, else the first given). No test
can hang on a modal box.
"""
from __future__ import annotations

import csv

import pytest
from PySide6.QtCore import QCoreApplication, QSettings
from PySide6.QtWidgets import QFileDialog, QMessageBox


class Boxes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.answers: list[QMessageBox.StandardButton] = []

    def texts(self, kind: str | None = None) -> list[str]:
        return [text for k, _, text in self.calls if kind is None or k == kind]

    def _record(self, kind: str):
        def box(parent, title, text, buttons=QMessageBox.StandardButton.Ok,
                default=QMessageBox.StandardButton.NoButton):
            self.calls.append((kind, title, text))
            if self.answers:
                return self.answers.pop(0)
            if default != QMessageBox.StandardButton.NoButton:
                return default
            return QMessageBox.StandardButton.Ok
        return box


@pytest.fixture(autouse=True)
def settings_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("settings")
    QCoreApplication.setOrganizationName("GraftTests")
    QCoreApplication.setApplicationName("GraftTests")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graft-cache"))
    return folder


@pytest.fixture(autouse=True)
def boxes(monkeypatch):
    b = Boxes()
    for kind in ("warning", "critical", "information", "question"):
        monkeypatch.setattr(QMessageBox, kind, staticmethod(b._record(kind)))
    monkeypatch.setattr(QMessageBox, "about", staticmethod(lambda parent, title, text: b.calls.append(("about", title, text))))
    return b


@pytest.fixture(autouse=True)
def no_file_dialogs(monkeypatch):
    """A file dialog a test did not plan for is cancelled instead of blocking."""
    for name in ("getOpenFileName", "getSaveFileName"):
        monkeypatch.setattr(QFileDialog, name, staticmethod(lambda *a, **k: ("", "")))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: ""))


@pytest.fixture(scope="session")
def default_network():
    """The bundled EfficientNet-Lite0, loaded once per test process; tests take copies (give_session)."""
    from engine.network.loading import load_network

    return load_network("default")


@pytest.fixture(scope="session")
def demo_csv(demo_manifest):
    return demo_manifest()


@pytest.fixture(scope="session")
def small_csv(demo_csv, tmp_path_factory):
    """The first 48 rows of the demo manifest (absolute image and mask paths): a quick training run."""
    rows = list(csv.reader(demo_csv.open(newline="")))
    header, body = rows[0], rows[1:49]
    image, mask = header.index("image"), header.index("mask")
    path = tmp_path_factory.mktemp("small") / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in body:
            row = list(row)
            row[image] = str((demo_csv.parent / row[image]).resolve())
            row[mask] = str((demo_csv.parent / row[mask]).resolve()) if row[mask] else ""
            writer.writerow(row)
    return path


@pytest.fixture
def window(qtbot):
    """A shown main window; its work is stopped and its changes marked saved before it closes."""
    from app.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    if w.jobs.train_job is not None:
        w.jobs.train_job.stop_and_wait(20_000)
        w.jobs.train_job = None
    for job in list(w.jobs.running.values()):
        job.stop_and_wait(20_000)
    w.workspace.weights_changed = False
    w.undo_stack.setClean()
    w.close()


@pytest.fixture(scope="package", autouse=True)
def gc_on_the_gui_thread(qapp):
    """As in the app: the cyclic collector never runs on a worker thread (see configure_app). The
    engine tests after these have no event loop to collect, so automatic collection comes back."""
    import gc

    from app.application import collect_garbage_on_gui_thread

    collect_garbage_on_gui_thread(qapp)
    assert not gc.isenabled()
    yield
    qapp._graft_gc.timer.stop()
    qapp._graft_gc = None
    gc.unfreeze()  # what the warm-up's end froze (app/garbage.py) is collected as usual again
    gc.enable()
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def no_thread_outlives_the_tests():
    """A QThread still running when Python exits aborts the process: end every worker first."""
    yield
    from app.workers import shutdown_all

    assert shutdown_all(30_000)
