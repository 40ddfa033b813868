"""The training recipe's defaults, defined once: ``rsc.train``, the training loop, a search's base model and
the study all read them (no torch here, so that command lines answer ``--help`` at once)."""

from __future__ import annotations

__all__ = ["DEFAULT_LR", "DEFAULT_BATCH_SIZE", "DEFAULT_WEIGHT_DECAY"]

#: peak learning rate of SGD one-cycle training from scratch
DEFAULT_LR = 0.05
#: images per training batch
DEFAULT_BATCH_SIZE = 64
#: SGD weight decay
DEFAULT_WEIGHT_DECAY = 5e-4
