"""Errors of the tracking layer."""

from __future__ import annotations

from rsc.errors import UserError


class TrackingError(UserError):
    """An MLflow backend that cannot be reached or written; the message names the URI."""
