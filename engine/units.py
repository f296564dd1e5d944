"""Short human-readable numbers, shared by the CLI, the window and reports."""
from __future__ import annotations

import math


def human_count(n: float | None) -> str:
    """Short parameter count: 950, 9.4K, 148K, 1.2M, 11.7M, 7.0B (empty for None)."""
    if n is None:
        return ""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """File size in binary units: 512 B, 12.9 MB, 3.0 TB (what a damaged file claims)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 epoch', '3 epochs', '0 files'; ``many`` for irregular plurals ('2 heads' needs none)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def quoted(text: object, limit: int = 60) -> str:
    """``repr(text)`` for a message, cut to about ``limit`` characters: a 200,000-character cell or column
    name quoted whole would bury what the message says ('xxxx…' (200,000 characters)). Any other value
    is cut the same way by its repr (a list of 5,000 numbers read from a file where a size belongs)."""
    if isinstance(text, str):
        return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text):,} characters)"
    try:
        shown = repr(text)
    except (RecursionError, ValueError):  # nested past the interpreter's depth; an int past repr's digit limit
        return f"<{type(text).__name__}>"
    return shown if len(shown) <= limit else f"{shown[:limit]}… ({type(text).__name__}, {len(shown):,} characters)"


def finite_number(value: object) -> bool:
    """An int or float (not a bool; what JSON and CSV parsing give) that is finite as a float. An int past
    float's range (``10**400`` read from JSON) is not: ``math.isfinite`` raises OverflowError on it (found by the
    ONNX metadata fuzz). No ``numbers`` import: the generated training script carries this function and keeps to
    a short list of imports."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
