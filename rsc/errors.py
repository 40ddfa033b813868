"""One small error hierarchy for bad input.

Anything derived from :class:`UserError` is the user's to fix: command-line entry points
print its message on one line to stderr and exit with code 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a wrong path, an unknown name, an impossible setting. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A setting or flag that cannot be honoured (bad ratio, unknown option...)."""


class DataError(UserError):
    """A dataset that cannot be read: missing path, empty folder, no images in a class..."""


class ModelError(UserError):
    """An unknown model name, weights that do not fit the architecture..."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded or does not match the dataset."""


class BudgetInfeasible(UserError):
    """A cost budget no model of the search space can meet, or a plan no scaling brings under it.

    Raised before any training when a budget is below what the methods can reach, and inside a
    trial when its sampled choices cannot be projected under the budget (the search records that
    trial as pruned, not failed).
    """
