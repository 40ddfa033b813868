"""Remote-sensing scene classification: datasets, splits, models, training and evaluation.

The foundation of the compression search: every other package imports from here, never the other
way. :mod:`rsc.catalog` (the registered RS datasets), :mod:`rsc.scenes` (decoded, cached scene
sets), :mod:`rsc.splits`, :mod:`rsc.loaders`, :mod:`rsc.augment`, :mod:`rsc.models`,
:mod:`rsc.loop` (the training loop), :mod:`rsc.metrics` (OA, kappa, confusion),
:mod:`rsc.checkpoint`; the commands ``python -m rsc.train`` and ``python -m rsc.evaluate``.
Submodules are imported where used so that command-line ``--help`` stays instant.
"""

__all__ = ["augment", "catalog", "checkpoint", "errors", "loaders", "loop", "metrics", "models", "scenes", "splits"]
