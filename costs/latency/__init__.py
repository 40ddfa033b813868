"""Latency tables: a model's latency on a target predicted from its kernels, measured once per kernel kind.

:mod:`costs.latency.kernels` splits a model into the kernels a runtime executes;
:mod:`costs.latency.templates` reads them again for every later model of one structure;
:mod:`costs.latency.profile` times a grid of every kernel kind on a target;
:mod:`costs.latency.fit` fits the whole-model correction; :mod:`costs.latency.table` holds the table,
predicts, saves and loads it. Import from those modules (this package imports none of them, so that
:mod:`costs.hardware` can read a table without loading the profiler).
"""
