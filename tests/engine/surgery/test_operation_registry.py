"""The registry a saved recipe is read back by knows every operation, whichever of the package's modules is
imported first: the operations live by family in engine/surgery/operations/, and a family the package
forgot to import would make projects using it unreadable."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine.surgery.operations as operations
from engine.surgery.operations import REGISTRY, Operation

ROOT = Path(__file__).resolve().parents[3]
# the kinds saved projects hold: renaming one makes those projects unreadable
KINDS = {"delete_output", "cut", "add_head", "remove_head", "update_head", "rename_head", "set_trainable",
         "lr_factor", "input_channels", "input_size"}


def _defined_kinds() -> dict[str, type[Operation]]:
    found = {}
    for info in pkgutil.iter_modules(operations.__path__):
        module = importlib.import_module(f"{operations.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Operation) and cls.kind and cls.__module__ == module.__name__:
                found[cls.kind] = cls
    return found


def test_every_operation_in_the_package_is_registered_by_its_kind():
    defined = _defined_kinds()
    assert set(defined) == KINDS
    assert REGISTRY == defined


def test_importing_only_the_base_module_registers_every_family():
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from engine.surgery.operations.operation import REGISTRY; print(' '.join(sorted(REGISTRY)))")
    out = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == KINDS
