"""Search engines: who proposes the next plan and keeps the study's state, behind one seam.

A real seam rather than a folder (issue 35): :class:`search.engines.base.Engine` is the small protocol the
search talks to, and :class:`search.engines.base.TrialRecord` the project-owned, frozen record of a trial it
reads, so Optuna's ``Study``/``FrozenTrial``/user attributes stay in :mod:`search.engines.optuna_engine` -
the way Optuna keeps its storages apart from its samplers. Why keep it: the driver, the final stage, the
report and the resume logic then depend on what a search keeps per trial, not on where Optuna stores it,
and a second engine (Ray Tune's searchers, measured in ``benchmarks/bench_ray_engines.py``) is one module.
"""
