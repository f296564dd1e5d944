"""``python main.py`` opens the window and starts loading the bundled network and the demo data."""
from __future__ import annotations

from PySide6.QtCore import QCoreApplication
from PySide6.QtWidgets import QApplication

import main
from app import application
from app.data import Datasets
from app.files import Files
from app.main_window import MainWindow


def test_main_without_arguments_runs_the_window(qapp, monkeypatch):
    calls = []
    monkeypatch.setattr(application, "configure_app", lambda app: calls.append(("configure",)))
    monkeypatch.setattr(Files, "load_model", lambda self, request, ask=True: calls.append(("model", request)))
    monkeypatch.setattr(Datasets, "load_demo_data", lambda self: calls.append(("demo",)))
    monkeypatch.setattr(application, "shutdown_all", lambda timeout: calls.append(("shutdown",)), raising=False)

    def exec_(self):  # instead of the event loop: look at the window, then close it as a person would
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        calls.append(("shown", len(windows)))
        for w in windows:
            w.close()
        return 0

    monkeypatch.setattr(QApplication, "exec", exec_)
    assert main.main([]) == 0
    assert ("configure",) in calls and ("model", {"spec": "default"}) in calls and ("demo",) in calls
    assert ("shown", 1) in calls


def test_configure_app_names_the_settings_and_styles_the_app(qapp):
    before = qapp.styleSheet()
    try:
        application.configure_app(qapp)
        assert QCoreApplication.organizationName() == "Graft" == QCoreApplication.applicationName()
        assert "QToolBar" in qapp.styleSheet()
        assert not qapp.windowIcon().isNull()
    finally:
        qapp.setStyleSheet(before)


def test_gui_options():
    assert application._parse([]) == {"model": "default", "data": "demo", "project": None, "demo_task": True}
    assert application._parse(["--no-default"]) == {"model": None, "data": None, "project": None, "demo_task": True}
    assert application._parse(["--no-demo-task"])["demo_task"] is False
    assert application._parse(["--model", "resnet18", "--data", "/d"])["model"] == "resnet18"
    assert application._parse(["x.graft"])["project"] == "x.graft"
