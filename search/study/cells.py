"""What a study runs: its settings, the methods it compares, and the cells they expand into.

A *cell* is one measured number of the study: one method, on one network, at one training ratio, one
split (repeat), one target compression rate, with or without distillation, under one augmentation.
Cells that several experiments share (the ResNet-18 baseline is a row of the baseline table, the
reference of every compression table and the "default augmentation" row of the ablation) are
planned once. Every cell names its base model (network, ratio, repeat, augmentation); bases are
trained once and cached like a search's (:mod:`search.base_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from search.base_model import DEFAULT_BATCH_SIZE, DEFAULT_LR

__all__ = ["StudyConfig", "Cell", "Method", "METHODS", "EXPERIMENTS", "AUGMENTS", "QUALITY_METHODS", "plan_cells",
           "augment_config"]

EXPERIMENTS = ("baselines", "families", "pruning", "augment", "quality")
#: What a study runs unless --experiments says otherwise: the research question's experiments; the
#: search-quality protocol (``quality``: hours of searches) only when asked for.
DEFAULT_EXPERIMENTS = EXPERIMENTS[:4]


@dataclass(frozen=True)
class Method:
    """A compression method as the study runs it.

    ``family``: weight / local / global compression (or ``pruning`` for the pruning comparison's
    structured criteria); ``kind``: how a cell is run (``plan``: a plan of spaces projected onto the
    rate, fine-tuned; ``soft``: soft filter pruning; ``slimming``: Network Slimming; ``search``: the
    compression search at that rate; ``teacher``: the study's network trained from scratch by KD
    from a larger teacher); ``fixed_rate``: the method decides its own rate (VBMF ranks, a teacher);
    ``search_methods``/``sampler``: what a ``search`` cell searches (``search.run --methods``) and with
    which Optuna sampler; ``allocate``/``allocate_damage``: how a search's or a pruning plan's
    per-layer cuts are allocated (``prune-alloc``, ``tucker-alloc``).
    """

    name: str
    family: str
    kind: str
    what: str
    fixed_rate: bool = False
    kd_default: bool = False     # distils when no --kd variant is asked for (global compression)
    criterion: str | None = None
    search_methods: tuple[str, ...] = ()
    sampler: str = "nsga2"
    allocate: str | None = None          # per-layer cuts allocated by this layer cost (a search's --allocate)
    allocate_damage: str = "importance"  # and priced so (--allocate-damage)


METHODS = {m.name: m for m in (
    Method("magnitude", "weight", "plan", "unstructured magnitude pruning (Han et al.), rate on non-zero params"),
    Method("tucker-vbmf", "local", "plan", "Tucker-2 on every convolution at EVBMF ranks (Kim et al.)",
           fixed_rate=True),
    Method("tucker", "local", "plan", "Tucker-2 on every convolution, uniform ranks projected onto the rate"),
    Method("tucker-vbmf-scaled", "local", "plan", "Tucker-2 at EVBMF's per-layer rank profile, its cuts scaled by "
           "one factor onto the rate"),
    Method("tucker-searched", "local", "search", "Tucker-2 with per-layer ranks searched at the rate",
           search_methods=("tucker",)),
    Method("distill-self", "global", "plan", "KD into the network thinned to the rate (L1-chosen channels)",
           kd_default=True),
    Method("distill-teacher", "global", "teacher", "KD from the larger --teacher into the network, from scratch",
           fixed_rate=True, kd_default=True),
    Method("l1", "pruning", "plan", "L1 filter norm (Li et al.), uniform ratio", criterion="l1"),
    Method("fpgm", "pruning", "plan", "filter pruning via geometric median (He et al.)", criterion="fpgm"),
    Method("taylor", "pruning", "plan", "first-order Taylor importance (Molchanov et al.)", criterion="taylor"),
    Method("sfp", "pruning", "soft", "soft filter pruning: zeroed, kept trainable, removed at the end",
           criterion="l1"),
    Method("slimming", "pruning", "slimming", "Network Slimming: L1 on BN scales for half the epochs, prune "
           "by BN scale, fine-tune the rest", criterion="bn_scale"),
    Method("l1-params", "pruning", "plan", "L1 channels, per-group counts allocated by params: the least L1 "
           "mass removed per parameter saved (spaces.allocate)", criterion="l1", allocate="params"),
    Method("l1-sensitivity", "pruning", "plan", "L1 channels, per-group counts allocated by params and each "
           "group's measured loss rise (pruned alone, BN re-estimated; Li et al. 2017, EagleEye)", criterion="l1",
           allocate="params", allocate_damage="sensitivity"),
    Method("searched", "pruning", "search", "per-layer pruning ratios searched at the rate (AMC-style)",
           search_methods=("prune",)),
    Method("search-nsga2", "search", "search", "the compression search (NSGA-II) over channel pruning and Tucker-2 "
           "at the rate", search_methods=("prune", "tucker")),
    Method("search-random", "search", "search", "random search over the same space, same trials and final stage",
           search_methods=("prune", "tucker"), sampler="random"),
    Method("search-alloc", "search", "search", "the compression search (NSGA-II) over channel pruning and Tucker-2 "
           "allocated by params, pruning cuts priced by their measured loss rise (--allocate params "
           "--allocate-damage sensitivity)", search_methods=("prune", "tucker"), allocate="params",
           allocate_damage="sensitivity"),
    Method("search-alloc-random", "search", "search", "random search over search-alloc's allocated space, same "
           "trials and final stage", search_methods=("prune", "tucker"), sampler="random", allocate="params",
           allocate_damage="sensitivity"),
)}

#: Default methods of the two compression experiments (magnitude is the weight family and a pruning method).
FAMILY_METHODS = ("magnitude", "tucker-vbmf", "tucker", "tucker-searched", "distill-self", "distill-teacher")
PRUNING_METHODS = ("magnitude", "l1", "fpgm", "taylor", "sfp", "slimming", "searched")
#: The search-quality protocol: the search against the baselines a user would otherwise run.
QUALITY_METHODS = ("search-alloc", "search-alloc-random", "l1", "tucker-vbmf-scaled")

#: The augmentation ablation's variants (colour jitter off in all three, so only the named parts differ);
#: ``default`` is what every other cell trains with: D4 + random resized crop + colour jitter 0.2.
AUGMENTS = {"none": dict(d4=False, crop=False, jitter=0.0), "d4": dict(d4=True, crop=False, jitter=0.0),
            "d4+crop": dict(d4=True, crop=True, jitter=0.0), "default": {}}


def augment_config(name: str) -> Any:
    """The :class:`rsc.augment.AugmentConfig` of a variant name (None: no augmentation at all)."""
    from rsc.augment import AugmentConfig

    if name == "none":
        return None
    return AugmentConfig(**AUGMENTS[name])


@dataclass
class StudyConfig:
    """Every setting of ``python -m search.study`` (defaults: the issue's full study)."""

    data: str | None = None
    dataset: str | None = None
    image_size: int = 64
    model: str = "resnet18"                  # the network every compression method compresses
    networks: tuple[str, ...] = ("alexnet", "vgg11", "vgg16", "googlenet", "squeezenet1_1", "resnet18", "resnet50")
    teacher: str | None = "resnet50"         # distill-teacher's teacher (None: no such cells)
    ratios: tuple[float, ...] = ()           # () = the dataset's literature ratios (the registry's)
    repeats: int = 3
    seed: int = 0
    epochs: int = 30                         # from-scratch training (bases, teacher-KD students)
    finetune_epochs: int = 30                # every compressed model's fine-tune budget: as long as the base's
                                             # training (measured: 10 left uniform L1 8 pts short at 10x)
    lr: float = DEFAULT_LR
    finetune_lr: float = 0.01
    batch_size: int = DEFAULT_BATCH_SIZE
    val_ratio: float = 0.1
    bn_batches: int = 4
    rates: tuple[float, ...] = (2.0, 4.0, 8.0)
    experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
    family_methods: tuple[str, ...] = FAMILY_METHODS
    pruning_methods: tuple[str, ...] = PRUNING_METHODS
    kd: tuple[bool, ...] = (False, True)     # the pruning comparison's with/without distillation
    augments: tuple[str, ...] = ("none", "d4", "d4+crop")
    augment_method: str = "l1"               # the compressed model of the ablation, at the middle rate
    quality_methods: tuple[str, ...] = QUALITY_METHODS
    quality_subject: str | None = None       # the method the quality tables pair every other against
                                             # (None: the first searched one of quality_methods)
    search_trials: int = 12                  # per searched cell
    search_fidelity: int = 2
    search_final: int = 3                    # models a searched cell's final stage fine-tunes (search --final-max)
    search_pick: str = "top"                 # which (search --final-pick: top or spread). A cell compares at
                                             # its rate: spread chose models at 4.2-15.3x for a 4x cell
    search_rungs: int = 1                    # successive halving rungs of a search's final stage (--final-rungs)
    search_kd: bool = False                  # KD in every search fine-tune (--finetune-kd) and the quality baselines'
    search_min_target: float | None = 0.9    # search --min-target: trials aim at 90-100% of the cell's rate
                                             # (None: the search's 0.1, trials at 1-10x the rate)
    search_folds: int = 0                    # search --final-folds: the final choice cross-validated over K folds
    search_zero_shot: bool = False           # search --zero-shot: adaptive-BN score and screen before fine-tuning
    rank_sample: int = 0                     # more trials per searched cell fine-tuned for the rank correlation
    slimming_reg: float = 1e-4               # Network Slimming's lambda on |gamma|
    weights: dict[str, str] = field(default_factory=dict)   # network -> local weights file
    network_lr: dict[str, float] = field(default_factory=dict)  # network -> its from-scratch lr (else lr)
    device: str | None = None
    name: str | None = None
    out: str = "runs"
    tracking_uri: str | None = None
    experiment: str = "rsc-study"
    progress: bool = True

    def lr_of(self, network: str) -> float:
        """The peak learning rate ``network`` is trained with from scratch (``--network-lr``, else ``--lr``)."""
        return float(self.network_lr.get(network, self.lr))

    def subject(self) -> str:
        """The quality experiment's subject: ``quality_subject``, else the first searched quality method."""
        searched = [m for m in self.quality_methods if m in METHODS and METHODS[m].kind == "search"]
        return self.quality_subject or (searched or list(self.quality_methods) or [""])[0]

    def study_name(self, dataset: str) -> str:
        return self.name or f"study-{dataset}-{self.model}-{self.image_size}px"

    def middle_rate(self) -> float:
        rates = sorted(self.rates)
        return rates[(len(rates) - 1) // 2]


@dataclass(frozen=True)
class Cell:
    """One measured number; ``id`` is its file name and its MLflow run name."""

    method: str            # "baseline" or a METHODS name
    network: str           # the network trained (baseline) or compressed
    train_ratio: float
    repeat: int
    rate: float | None = None    # target compression rate; None for baselines and fixed-rate methods
    kd: bool = False
    augment: str = "default"
    experiments: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        rate = "" if self.rate is None else f"-x{self.rate:g}"
        return (f"{self.method}-{self.network}-r{self.train_ratio:g}{rate}{'-kd' if self.kd else ''}"
                f"-aug-{self.augment.replace('+', '_')}-s{self.repeat}")

    @property
    def base_key(self) -> tuple[str, float, int, str]:
        """The base model a cell starts from (teacher cells: the teacher's, set by the runner)."""
        return (self.network, self.train_ratio, self.repeat, self.augment)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "network": self.network, "train_ratio": self.train_ratio,
                "repeat": self.repeat, "target_rate": self.rate, "kd": self.kd, "augment": self.augment,
                "experiments": list(self.experiments),
                "family": "baseline" if self.method == "baseline" else METHODS[self.method].family}


def plan_cells(config: StudyConfig, ratios: tuple[float, ...]) -> list[Cell]:
    """Every cell of the study, baselines first (they train the bases the others start from), each once."""
    cells: dict[str, Cell] = {}

    def add(cell: Cell, experiment: str) -> None:
        old = cells.get(cell.id)
        tags = (old.experiments if old else ()) + ((experiment,) if not old or experiment not in old.experiments else ())
        cells[cell.id] = replace(cell, experiments=tags)

    for ratio in ratios:
        for repeat in range(config.repeats):
            if "baselines" in config.experiments:
                for net in config.networks:
                    add(Cell("baseline", net, ratio, repeat), "baselines")
            for exp, methods, kds in (("families", config.family_methods, None),
                                      ("pruning", config.pruning_methods, config.kd),
                                      # the same fine-tune for every method: KD in all or in none
                                      ("quality", config.quality_methods, (config.search_kd,))):
                if exp not in config.experiments:
                    continue
                add(Cell("baseline", config.model, ratio, repeat), exp)  # the reference row
                for name in methods:
                    m = METHODS[name]
                    for kd in (kds if kds is not None else (m.kd_default,)):
                        if m.kind == "teacher" and not config.teacher:
                            continue
                        for rate in ((None,) if m.fixed_rate else config.rates):
                            add(Cell(name, config.model, ratio, repeat, rate, kd or m.kd_default), exp)
            if "augment" in config.experiments:
                for aug in config.augments:
                    add(Cell("baseline", config.model, ratio, repeat, augment=aug), "augment")
                    add(Cell(config.augment_method, config.model, ratio, repeat, config.middle_rate(),
                             augment=aug), "augment")
    # split by split, so that a study cut short has every method on its first splits rather than
    # all the baselines and nothing else; on each split the bases are trained first
    return sorted(cells.values(), key=lambda c: (c.repeat, c.train_ratio, c.method != "baseline",
                                                 c.network != config.model))


def cell_epochs(cell: Cell, config: StudyConfig) -> float:
    """Training epochs a cell costs (in passes of its network over the training part), base excluded."""
    if cell.method == "baseline":
        return 0.0
    m = METHODS[cell.method]
    if m.kind == "teacher":
        return config.epochs * 1.3          # student steps plus the teacher's forward passes
    if m.kind == "search":
        final, left = 0.0, config.search_final
        for i in range(config.search_rungs):  # successive halving: the better half goes on, twice the epochs
            final += left * (config.finetune_epochs / 2 ** (config.search_rungs - 1 - i))
            left = math.ceil(left / 2)
        folds = config.search_folds  # K more fine-tunes per final model, and K bases on (K-1)/K of the data
        cv = folds * (config.search_final + config.rank_sample) * config.finetune_epochs
        bases = config.epochs * (folds - 1) if folds else 0
        return ((config.search_trials * config.search_fidelity + final + config.rank_sample * config.finetune_epochs + cv)
                * (1.3 if cell.kd or config.search_kd else 1.0) + bases)
    return config.finetune_epochs * (1.3 if cell.kd else 1.0)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
