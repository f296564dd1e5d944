"""Re-make the README's screenshots: ``.venv/bin/python docs/make_screenshots.py [OUT_DIR]``.

Drives the real window through the states a new user meets (loaded, data, after surgery, training,
evaluation) and saves each as a PNG; about a minute on a 2-core CPU. Runs offscreen by default; the
README's images come from a real X server, as a user sees them:
``Xvfb :99 -screen 0 1600x1000x24 & DISPLAY=:99 QT_QPA_PLATFORM=xcb .venv/bin/python docs/make_screenshots.py``.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.application import configure_app  # noqa: E402
from engine.network.layer_tree import HEADS_KEY  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer  # noqa: E402

SIZE = (1480, 900)  # about the window's own first size (1480x940)


def wait(app: QApplication, done, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise SystemExit("timed out waiting for the window")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the last repaint land
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication([])
    QCoreApplication.setOrganizationName("GraftScreenshots")  # a clean, throw-away settings file
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp())
    configure_app(app)
    from app.main_window import MainWindow

    w = MainWindow()
    w.resize(*SIZE)
    w.show()

    def shot(name: str) -> None:
        end = time.monotonic() + 0.3  # a tab just made current lays out its scroll area on later events
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)
        w.grab().save(str(out / name))
        print("saved", out / name)

    w.files.load_model({"spec": "default"})
    w.datasets.load_demo_data()
    wait(app, lambda: w.session is not None and w.data is not None and not w.jobs.busy)
    w.tabs.setCurrentIndex(0)
    shot("01-loaded.png")
    w.tabs.setCurrentIndex(1)
    shot("02-data.png")

    w.surgery.apply_op(DeleteOutputLayer())
    for spec in w.data.heads[:2]:
        w.surgery.apply_op(AddHead(spec, seed=0))
    w.surgery.apply_preset("heads-only")
    w.tabs.setCurrentIndex(0)
    w.tree_view.select_path(f"{HEADS_KEY}.{w.session.heads[0].name}")
    shot("03-surgery.png")

    w.training_panel.epochs_spin.setValue(40)
    w.training.start()
    w.tabs.setCurrentIndex(2)

    def epochs() -> int:
        xs = w.curve_panel.curve("val:total").getData()[0]
        return 0 if xs is None else len(xs)

    wait(app, lambda: not w.jobs.training or epochs() >= 25)
    shot("04-training.png")
    wait(app, lambda: w.evaluation.last_report is not None and not w.jobs.training)
    w.evaluation.predict_image(str(w.data.val[5].path))
    wait(app, lambda: not w.jobs.busy)
    w.tabs.setCurrentIndex(3)
    shot("05-evaluation.png")
    w.workspace.weights_changed = False
    w.setWindowModified(False)
    w.close()


if __name__ == "__main__":
    main()
