"""A real Graft window with unsaved surgery, for the crash-recovery tests (and the screenshot) to kill with
SIGKILL: it opens a small network, deletes its classifier, adds a head, keeps a recovery copy at once and
prints ``written PATH``; then it waits to be killed. ``python recovery_child.py SETTINGS_DIR [PROJECT]``
(GRAFT_CACHE_DIR says where the copy goes; PROJECT: the project the work says it came from)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from PySide6.QtCore import QCoreApplication, QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from engine.network.heads import HeadSpec  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.network.preprocess import InputSpec  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer  # noqa: E402
from engine.surgery.session import Session  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    app = QApplication([sys.argv[0]])
    QCoreApplication.setOrganizationName("GraftTests")
    QCoreApplication.setApplicationName("GraftTests")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, sys.argv[1])
    from app.main_window import MainWindow

    window = MainWindow()
    window.show()
    torch.manual_seed(0)
    session = Session(load_network("mobilenet_v3_small", random_init=True))
    session.model.input_spec = InputSpec(size=64, resize=73)
    window.workspace.set_session(session, project_path=sys.argv[2] if len(sys.argv) > 2 else None)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", "single", labels=["circle", "square", "star"]), seed=3))
    window.recovery.written.connect(lambda path: print("written", path, flush=True))
    if not window.recovery.autosave():
        print("nothing to keep", flush=True)
        return 1
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
