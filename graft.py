#!/usr/bin/env python3
"""Graft's set-up and launcher, the same on Linux, macOS and Windows (``./graft`` calls it on Linux/macOS).

    python graft.py run [ARGS]   open the window (bundled EfficientNet-Lite0 and the demo data)
    python graft.py test [ARGS]  import contracts + the whole test suite, offscreen, in parallel
    python graft.py test --quick the same without the tests marked slow (children processes, training)
    python graft.py cli ARGS     the command line (main.py ARGS)
    python graft.py setup        only create .venv and install the pinned dependencies

On first use it creates ``.venv`` beside this file and installs the pinned dependencies from
pyproject.toml (again whenever pyproject.toml changes). Standard library only: it runs before anything
is installed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
STAMP = VENV / ".graft-installed"
# Qt's xcb platform plugin needs these Debian/Ubuntu packages to open a window.
QT_LIBS = ("libxcb-cursor0", "libxkbcommon-x11-0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0",
           "libxcb-render-util0", "libxcb-shape0", "libegl1")
USAGE = "usage: python graft.py run|test|cli|setup [ARGS]"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def say(text: str) -> None:
    print(f"graft: {text}", file=sys.stderr, flush=True)


def setup() -> Path:
    """Create the virtual environment and install Graft with its pinned dependencies when needed."""
    python = venv_python()
    if not python.exists():
        say(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    want = hashlib.sha256((HERE / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        say("installing dependencies (first run downloads PyTorch, a few GB)")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", ".[dev]"], cwd=HERE, check=True)
        STAMP.write_text(want + "\n")
    return python


def qt_system_libs() -> None:
    """On Debian/Ubuntu, install what Qt's window plugin needs (as root, or with sudo), else say what."""
    if not sys.platform.startswith("linux") or shutil.which("dpkg-query") is None:
        return
    missing = []
    for pkg in QT_LIBS:
        found = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "ok installed" not in found.stdout:
            missing.append(pkg)
    if not missing:
        return
    install = ["apt-get", "install", "-y", "-q", *missing]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        quiet = {"stdout": subprocess.DEVNULL}
        if subprocess.run(install, **quiet).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], **quiet)
            subprocess.run(install, **quiet)
    elif shutil.which("sudo"):
        say(f"Qt needs: {' '.join(missing)} — installing with sudo")
        subprocess.run(["sudo", *install])
    else:
        say(f"Qt needs these packages to open a window: {' '.join(missing)} (apt-get install them)")


def _exec(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Become ``cmd`` where the system allows (signals and the exit status are the program's own), else
    run it and hand back its exit status (Windows)."""
    if os.name != "nt":
        if cwd is not None:
            os.chdir(cwd)
        os.execve(cmd[0], cmd, env if env is not None else dict(os.environ))
    return subprocess.run(cmd, env=env, cwd=cwd).returncode


def test_workers() -> int:
    """How many processes run the tests (pytest-xdist): ``$GRAFT_TEST_WORKERS``, else one per core, at
    most 4 (each holds a few GB: PyTorch, Qt, the networks of its tests)."""
    wanted = os.environ.get("GRAFT_TEST_WORKERS", "").strip()
    if wanted.isdigit():
        return int(wanted)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def pytest_options(args: list[str]) -> list[str]:
    """pytest's options for ``test [--quick] [ARGS]``: quiet, the tests shared out over
    :func:`test_workers` processes, a test file's tests in one process (they share its fixtures);
    ``--quick`` leaves out the tests marked slow. ARGS come last and win (``-n 0``: one process)."""
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    workers = test_workers()
    options = ["-q"]
    if workers > 1:
        options += ["-n", str(workers), "--dist", "loadfile"]
    if quick:
        options += ["-m", "not slow"]
    return [*options, *args]


def run(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("run", [])
    if command not in ("run", "test", "cli", "setup"):
        print(USAGE, file=sys.stderr)
        return 2
    python = str(setup())
    if command == "setup":
        return 0
    if command == "test":
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        scripts = Path(python).parent
        lint = scripts / ("lint-imports.exe" if os.name == "nt" else "lint-imports")
        if subprocess.run([str(lint), "--no-cache"], cwd=HERE, env=env).returncode != 0:
            return 1
        return _exec([python, "-m", "pytest", *pytest_options(args)], env=env, cwd=HERE)
    if command == "run" and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        qt_system_libs()
    # run and cli keep the caller's working directory, so relative paths mean what the user typed.
    return _exec([python, str(HERE / "main.py"), *args])


if __name__ == "__main__":
    try:
        sys.exit(run(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        say(f"set-up failed: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}")
        sys.exit(1)
