"""``run_app(argv)``: the Graft window, opened with the bundled network and the demo data loading."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from .settings import APPLICATION, ORGANIZATION
from .workers import shutdown_all

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def collect_garbage_on_gui_thread(app: QApplication) -> None:
    """Python's cyclic garbage collector on the GUI thread only, on a timer, its full collections kept
    short (:mod:`app.garbage`). Idempotent."""
    if getattr(app, "_graft_gc", None) is None:
        from .garbage import GuiCollector

        app._graft_gc = GuiCollector(interval=0.5)


def configure_app(app: QApplication) -> None:
    """Names for QSettings, the Fusion style with Graft's style sheet, the window icon, and garbage
    collection on the GUI thread only."""
    collect_garbage_on_gui_thread(app)
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("Graft")
    app.setStyle("Fusion")
    qss = RESOURCES / "style.qss"
    if qss.is_file():
        app.setStyleSheet(qss.read_text(encoding="utf-8"))
    app.setWindowIcon(QIcon(str(RESOURCES / "icons" / "graft.svg")))


def _parse(argv: list[str]) -> dict:
    """GUI options: ``--no-default`` (start empty), ``--model SPEC``, ``--data PATH``, a ``.graft`` file,
    ``--no-demo-task`` (the bundled network and the demo data without the demo task's heads)."""
    opts = {"model": "default", "data": "demo", "project": None, "demo_task": True}
    args = [a for a in argv if a != "--gui"]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--no-default":
            opts["model"], opts["data"] = None, None
        elif a == "--no-demo-task":
            opts["demo_task"] = False
        elif a in ("--model", "--data") and i + 1 < len(args):
            opts[a[2:]] = args[i + 1]
            i += 1
        elif a.endswith(".graft"):
            opts["project"] = a
        i += 1
    return opts


def run_app(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    QApplication.setAttribute(Qt.ApplicationAttribute.AA_DontShowIconsInMenus, False)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "graft"])
    configure_app(app)

    from .main_window import MainWindow

    opts = _parse(argv)
    window = MainWindow()
    window.show()
    if opts["project"]:
        window.files.open_project_file(opts["project"])
    elif opts["model"]:
        window.files.load_model({"spec": opts["model"]})
    if opts["data"] == "demo":
        if opts["model"] == "default" and not opts["project"] and opts["demo_task"]:
            window.surgery.arm_demo_task()  # a classification, a segmentation and a box head, once both are in
        window.datasets.load_demo_data()
    elif opts["data"]:
        window.datasets.load_data(opts["data"])
    code = app.exec()
    shutdown_all(30000)  # a load still running when the window closed ends before Python does
    return int(code)
