"""Errors of the compression spaces.

Every bad input a space can meet (a ratio outside its range, a rank above the channel count,
a plan that does not fit the model, a layer the method cannot handle, an unsupported
quantisation backend) raises :class:`SpaceError`, a :class:`rsc.errors.UserError`, so command-line
entry points print it on one line and exit with code 2. Messages name the space, the parameter
and the layer, and quote the bad value.
"""

from __future__ import annotations

from rsc.errors import BudgetInfeasible, UserError

__all__ = ["BudgetInfeasible", "SpaceError"]


class SpaceError(UserError):
    """A compression choice or plan that cannot be honoured for this model."""
