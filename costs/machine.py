"""This machine as error messages and fingerprints describe it: CPU name and cores, CUDA, onnxruntime."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from pathlib import Path

__all__ = ["cpu_count", "cpu_name", "machine_summary", "first_line"]


def first_line(exc: BaseException) -> str:
    """The exception as one line: its type and the first line of its message (colour codes dropped)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``model name``, or an ARM board's ``Model``/``Hardware``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> str:
    """What this machine has, for error messages."""
    import torch

    parts = [f"cpu ({cpu_count()} cores)"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    parts.append(", ".join(f"cuda:{i}" for i in range(n)) if n else "no CUDA device")
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        parts.append(f"onnxruntime providers {', '.join(ort.get_available_providers())}")
    return "this machine has " + "; ".join(parts)
