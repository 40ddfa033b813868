"""The Optuna samplers the search offers."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("name", ["nsga2", "tpe", "gp", "random"])
def test_samplers_build_seeded_without_deprecation_warnings(name):
    """Optuna 4.9+ deprecates TPE's warn_independent_sampling: building a sampler must not warn."""
    from search.engines.optuna_engine import make_sampler

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        sampler = make_sampler(name, seed=3)
    assert sampler is not None


def test_unknown_sampler_is_a_user_error():
    from search.engines.optuna_engine import make_sampler
    from rsc.errors import UserError

    with pytest.raises(UserError, match="unknown sampler 'cmaes'"):
        make_sampler("cmaes", seed=0)
