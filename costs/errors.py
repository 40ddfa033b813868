"""Errors of cost measurement: models a target cannot run, latency tables that do not fit."""

from __future__ import annotations

from rsc.errors import ConfigError

__all__ = ["TargetUnsupported", "TableMiss", "TableMismatch"]


class TargetUnsupported(ConfigError):
    """A model the target's runtime or device cannot run (int8 on ONNX or CUDA, a failed trace...)."""


class TableMiss(ConfigError):
    """A kernel (or model) the table has no entry for, with ``on_missing="error"``."""


class TableMismatch(ConfigError):
    """A table measured on another target, or profiled for another model, input size or classes."""
