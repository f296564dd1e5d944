"""What Graft runs on, for ``main.py --version`` and the window's About box: versions, threads, devices
and the allocator setting (:mod:`engine.runtime.allocator`)."""
from __future__ import annotations

import os
import platform
import sys


def environment() -> list[tuple[str, str]]:
    """``(label, value)`` rows. Imports torch and onnxruntime (about a second the first time)."""
    import engine
    from engine.runtime.allocator import allocator_setting

    rows = [("graft", engine.__version__),
            ("python", f"{platform.python_version()} ({platform.system()} {platform.machine()})")]
    try:
        import torch
        import torchvision

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        rows.append(("torch", f"{torch.__version__}, torchvision {torchvision.__version__}; "
                              f"{torch.get_num_threads()} CPU threads on {cores} cores"))
        gpus = []
        if torch.cuda.is_available():
            gpus.append(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            gpus.append("Apple MPS")
        rows.append(("gpu", ", ".join(gpus) or "none (training and inference on the CPU)"))
    except ImportError as exc:
        rows.append(("torch", f"not importable ({exc})"))
    try:
        import onnxruntime

        from engine.runtime import onnx_trunk

        use = "on" if onnx_trunk.enabled() else f"off ({onnx_trunk.ENV})"
        rows.append(("onnxruntime", f"{onnxruntime.__version__}; frozen trunk on the CPU through onnxruntime: {use}"))
    except ImportError as exc:
        rows.append(("onnxruntime", f"not importable ({exc})"))
    setting = allocator_setting()
    rows.append(("allocator", setting.describe() if setting is not None else "not configured (system default)"))
    if sys.platform.startswith("linux") and os.environ.get("LD_PRELOAD"):
        rows.append(("LD_PRELOAD", os.environ["LD_PRELOAD"]))
    return rows


def describe_environment() -> str:
    rows = environment()
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
