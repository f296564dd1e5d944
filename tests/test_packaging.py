"""The wheel installs cleanly: one package, ``graft``, with every resource the app needs, and the entry
points work from outside the repository (``graft layers``, ``python -m graft``, an offscreen window)."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("engine", "widgets", "app", "commands", "resources")


def _packages_on_disk() -> set[str]:
    found = {"graft"}
    for part in PARTS:
        for init in (ROOT / part).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            found.add(".".join(("graft", *rel.parts)))
    return found


def test_every_package_folder_is_in_the_wheel_list():
    """A new engine stage that is not listed would be left out of the wheel and fail only when installed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()


def test_test_modules_have_unique_names():
    """The test folders are not packages, so pytest imports each test module by its file name: two files of
    one name in different folders stop the whole run at collection ("import file mismatch")."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (without dependencies: the test's environment has
    them) into a fresh folder, in a folder whose name has a space and a non-ASCII letter."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist, target = tmp / "dist", tmp / "site pkgs é"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                            "-w", str(dist), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(dist.glob("graft-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("graft-")}
    assert tops == {"graft"}  # nothing generic such as app/, engine/ or main.py in site-packages
    for needed in ("graft/resources/style.qss", "graft/resources/demo_recipe.json",
                   "graft/resources/icons/graft.svg", "graft/engine/network/heads.py", "graft/__main__.py",
                   "graft/engine/export/train_script.py.tmpl"):
        assert needed in names
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def _run(target: Path, *args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: int = 240):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), QT_QPA_PLATFORM="offscreen", **(extra_env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_installed_command_line_runs_outside_the_repository(installed, tmp_path):
    out = _run(installed, "-m", "graft", "layers", "--model", "resnet18", "--random-weights", "--depth", "1",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "layer4" in out.stdout and "fc" in out.stdout
    where = _run(installed, "-c", "import graft, engine, app; print(engine.__file__); print(app.__file__)",
                 cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed)) for line in where.stdout.split("\n") if line.strip())
    script = installed / "bin" / "graft"
    assert script.exists() and (installed / "bin" / "graft-gui").exists()


WINDOW = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
app = QApplication(["graft"])
import graft.__main__ as entry

def look():
    from app.main_window import MainWindow
    windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
    print("windows", len(windows), "styled", "QToolBar" in app.styleSheet(), "icon", not app.windowIcon().isNull(), flush=True)
    for w in windows:
        w.close()

QTimer.singleShot(1500, look)
sys.argv = ["graft-gui", "--no-default"]
sys.exit(entry.gui())
"""


@pytest.mark.slow
def test_installed_window_starts_offscreen(installed, tmp_path):
    out = _run(installed, "-c", WINDOW, cwd=tmp_path,
               extra_env={"XDG_CONFIG_HOME": str(tmp_path / "config"), "GRAFT_CACHE_DIR": str(tmp_path / "c")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "windows 1 styled True icon True" in out.stdout, out.stdout + out.stderr[-2000:]


def test_launcher_knows_its_commands():
    out = subprocess.run([sys.executable, str(ROOT / "graft.py"), "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: python graft.py run|test|cli|setup" in out.stderr
    bash = (ROOT / "graft").read_text()
    assert "graft.py" in bash  # ./graft is only the shorthand: one implementation


def _launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("graft_launcher", ROOT / "graft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_runs_the_tests_in_parallel_and_quick_leaves_out_the_slow_ones(monkeypatch):
    """``graft test`` shares the tests out over processes (a file's tests stay in one, sharing its module
    fixtures); ``--quick`` leaves out the tests marked slow; the caller's options come last, so they win."""
    launcher = _launcher()
    monkeypatch.setenv("GRAFT_TEST_WORKERS", "2")
    assert launcher.pytest_options([]) == ["-q", "-n", "2", "--dist", "loadfile"]
    assert launcher.pytest_options(["--quick", "-x"]) == ["-q", "-n", "2", "--dist", "loadfile", "-m", "not slow", "-x"]
    monkeypatch.setenv("GRAFT_TEST_WORKERS", "1")
    assert launcher.pytest_options(["tests/engine"]) == ["-q", "tests/engine"]
    monkeypatch.delenv("GRAFT_TEST_WORKERS")
    assert 1 <= launcher.test_workers() <= 4
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(d.startswith("pytest-xdist==") for d in dev)
