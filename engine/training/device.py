"""Where training runs and in what precision: choosing the device, autocast, describing it for people,
and turning out-of-memory and DataLoader-worker failures into messages for the user."""
from __future__ import annotations

import contextlib

import torch

from engine.errors import GraftError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" → CUDA, else MPS, else CPU; an explicit choice that is not available → GraftError."""
    text = str(name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = text.split(":")[0]
    if base == "cuda":
        if not torch.cuda.is_available():
            raise GraftError("No CUDA GPU is available here (or this PyTorch was built without CUDA); "
                             "use --device cpu or auto.")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GraftError(f"There is no GPU {text} (this machine has {torch.cuda.device_count()}).")
        return dev
    if base == "mps":
        if not _mps_available():
            raise GraftError("Apple's MPS GPU backend is not available here; use cpu or auto.")
        return torch.device("mps")
    if base == "cpu":
        return torch.device("cpu")
    raise GraftError(f"Unknown device {name!r}: use auto, cuda, mps or cpu.")


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, else fp16; no autocast elsewhere or with amp off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device, dtype: torch.dtype | None) -> str:
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({precision})"
    if device.type == "mps":
        return f"Apple GPU (MPS, {precision})"
    return f"CPU ({torch.get_num_threads()} threads, {precision})"


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory_message(device: torch.device, batch_size: int, phase: str | None = None,
                          configured: int | None = None) -> str:
    """What to tell the user. ``batch_size``: the batch that failed; ``phase``: what was running
    ("computing features", "training", "validating", "evaluating"); ``configured``: the batch-size
    setting, when the failed batch was derived from it (e.g. twice it for validation)."""
    setting = configured or batch_size
    smaller = max(1, setting // 2)
    where = "GPU" if device.type in ("cuda", "mps") else "computer"
    during = f" while {phase}" if phase else ""
    derived = (f" ({batch_size // setting}x the batch size setting {setting})"
               if configured and batch_size != configured and batch_size % configured == 0 else "")
    return (f"The {where} ran out of memory{during} at batch size {batch_size}{derived}. "
            f"Try a smaller batch size (e.g. {smaller})" + (", or train on the CPU." if where == "GPU" else "."))


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


def clean_loader_error(exc: BaseException) -> GraftError | None:
    """A GraftError raised inside a DataLoader worker comes back wrapped with a traceback in its text;
    return a GraftError with just the original one-line message (None if ``exc`` is not one)."""
    if not isinstance(exc, GraftError):
        return None
    text = str(exc)
    if not text.startswith("Caught ") or "Traceback" not in text:
        return exc
    for line in reversed(text.strip().splitlines()):
        if "GraftError:" in line:
            return GraftError(line.split("GraftError:", 1)[1].strip())
    return GraftError(text.strip().splitlines()[-1])
