"""``python -m search.study``: the research question's experiments on one dataset folder, by one command.

Four experiments, each a set of *cells* (:mod:`search.study.cells`), each cell one number:

* ``baselines``: the field's classic networks trained from scratch at the dataset's literature
  training ratios, over K seeded splits (OA mean +- std);
* ``families``: weight compression (magnitude pruning), local compression (Tucker-2 at EVBMF ranks,
  at uniform ranks projected onto the rate, and at searched ranks) and global compression (KD into
  the network thinned to the rate; KD from a larger teacher into the network) at matched rates;
* ``pruning``: magnitude, L1, FPGM, Taylor, soft filter pruning, Network Slimming and the searched
  per-layer policy, with and without KD from the uncompressed model, at matched rates and the same
  fine-tune budget;
* ``augment``: no augmentation vs D4 vs D4 + random resized crops, on the base and on a compressed model.

The methods are every registered space's presets (a new space with a preset is a method at once) and
the study's own baselines (:mod:`search.study.methods`; ``--list-methods``); the settings one
dataclass, the searched cells' a template of the search's (:mod:`search.study.config`).
Same splits, epochs and seeds for every method; the test part is used only for the final numbers.
Results: ``<out>/<name>/`` (``tables.md``, ``results.csv``, ``summary.csv``, plots, one JSON row per
cell) and MLflow (experiment ``rsc-study``, one parent run, one child run per cell). Resumable: run
the same command again and finished cells are kept.
"""

from search.study.cells import Cell, StudyConfig, plan_cells
from search.study.methods import study_methods
from search.study.runner import estimate, prepare_study, run_study

__all__ = ["study_methods", "Cell", "StudyConfig", "plan_cells", "prepare_study", "run_study", "estimate"]
