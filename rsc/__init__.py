"""Remote-sensing scene classification: datasets, splits, models, training and evaluation.

The foundation of the compression search: ``spaces`` imports from here, never the other way.
Submodules are imported where used so that command-line ``--help`` stays instant.
"""

__all__ = ["augment", "checkpoint", "data", "datasets", "errors", "evaluation", "models", "training"]
