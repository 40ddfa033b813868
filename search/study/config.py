"""Every setting of ``python -m search.study``, with its default and its help, in one dataclass.

The command line is generated from the fields (:func:`rsc.options.add_options`, as ``search.run``'s), so
a flag's name, default and help are said once. The searched cells' settings are one
:class:`search.config.SearchConfig`, the *template* (``StudyConfig.search``): what every searched cell's
search shares - trials, fidelity, the final stage, KD, the aim. Each cell derives its own search from it
with ``dataclasses.replace``, setting only what is the cell's (data, split, network, budget, methods,
sampler, allocation, study name, folders; :func:`search.study.execute.cell_search_config`). The
template's defaults are ``search.run``'s but :data:`SEARCH_DEFAULTS`; the study's ``--search-*`` flags
(:data:`SEARCH_FLAGS`) set its fields.

``study.json`` records :meth:`StudyConfig.settings`; :meth:`StudyConfig.from_settings` reads them back,
and the flat ``search_*`` keys of studies recorded before the template too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from rsc.cli import positive_int
from rsc.options import opt
from rsc.recipe import DEFAULT_LR
import search.config as search_config
from search.config import SearchConfig

__all__ = ["StudyConfig", "SEARCH_DEFAULTS", "SEARCH_FLAGS", "SearchFlag", "EXPERIMENTS", "DEFAULT_EXPERIMENTS",
           "AUGMENTS", "QUALITY_METHODS", "SPACE_OPTIONS", "search_flags",
           "search_default", "CELL_FIELDS"]

EXPERIMENTS = ("baselines", "families", "pruning", "augment", "quality")
#: What a study runs unless --experiments says otherwise: the research question's experiments; the
#: search-quality protocol (``quality``: hours of searches) only when asked for.
DEFAULT_EXPERIMENTS = EXPERIMENTS[:4]
#: The search-quality protocol: the search against the baselines a user would otherwise run.
QUALITY_METHODS = ("search-alloc", "search-alloc-random", "l1", "tucker-vbmf-scaled")
#: The augmentation ablation's variants (colour jitter off in all three, so only the named parts differ);
#: ``default`` is what every other cell trains with: D4 + random resized crop + colour jitter 0.2.
AUGMENTS = {"none": dict(d4=False, crop=False, jitter=0.0), "d4": dict(d4=True, crop=False, jitter=0.0),
            "d4+crop": dict(d4=True, crop=True, jitter=0.0), "default": {}}

#: Where the searched cells' template differs from ``search.run``'s defaults, on purpose: a cell answers
#: "how good at this rate", so its trials aim at 90-100% of the rate (``min_target``) and the final stage
#: fine-tunes the best-scored models inside it (``final_pick`` top; spread chose models at 4.2-15.3x for a
#: 4x cell); 12 trials and 3 finalists fit a cell into the study's budget; a cell's search resumes with
#: the study, and its models stay in its rows, not in MLflow.
SEARCH_DEFAULTS: dict[str, Any] = {"trials": 12, "final_max": 3, "final_pick": "top", "min_target": 0.9,
                                   "resume": True, "log_models": False, "progress": False, "baseline": False}
#: The template fields each searched cell sets itself (:func:`search.study.execute.cell_search_config`):
#: not part of the template's record.
CELL_FIELDS = ("data", "dataset", "image_size", "train_ratio", "val_ratio", "model", "weights", "base_epochs",
               "base_lr", "budgets", "methods", "sampler", "allocate", "allocate_damage", "final_epochs",
               "finetune_lr", "batch_size", "bn_batches", "seed", "study", "out", "tracking_uri", "device")
#: Study settings that set a constructor option of every method whose space takes that option
#: (None: the space's own default).
SPACE_OPTIONS = {"slimming_reg": "reg"}


@dataclass(frozen=True)
class SearchFlag:
    """A study flag setting a field of the search template: ``--search-trials`` sets ``trials``."""

    field: str
    help: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


#: The study's flags of the search template (their names are the study's, documented in the READMEs).
SEARCH_FLAGS: dict[str, SearchFlag] = {
    "search_trials": SearchFlag("trials", "trials per searched cell (default {default})", {"type": positive_int}),
    "search_fidelity": SearchFlag("fidelity_epochs", "fine-tune epochs per search trial (default {default})",
                                  {"type": positive_int}),
    "search_final": SearchFlag("final_max", "models a searched cell's final stage fine-tunes (search --final-max; "
                                            "default {default})", {"type": positive_int}),
    "search_pick": SearchFlag("final_pick", "which: the top trial scores inside the budget or spread along the "
                                            "front (search --final-pick; default {default})"),
    "search_rungs": SearchFlag("final_rungs", "successive halving rungs of a searched cell's final stage (search "
                                              "--final-rungs; default {default})", {"type": positive_int}),
    "search_folds": SearchFlag("final_folds", "choose a searched cell's model by its OA cross-validated over K "
                                              "folds of the training part, each final model fine-tuned K more "
                                              "times from a base trained without the fold (search --final-folds; "
                                              "default {default}: by validation OA)", {"metavar": "K"}),
    "search_kd": SearchFlag("finetune_kd", "KD from the base model during every fine-tune of a search (search "
                                           "--finetune-kd), and of the quality experiment's baselines (the same "
                                           "fine-tune for every method)"),
    "search_min_target": SearchFlag("min_target", "search --min-target: a searched cell's trials aim at [F, 1] of "
                                                  "its rate's params (default {default}: compared at the rate; 0.1, "
                                                  "the search's own default, spreads them over 1-10x the rate)",
                                    {"metavar": "F"}),
    "search_baseline": SearchFlag("baseline", "a searched cell's final stage also fine-tunes the uniform configuration "
                                              "at its rate (search.run's baseline; off by default: the study's l1 cell "
                                              "is that configuration at the study's fine-tune length) and its row "
                                              "records the uniform model and searched minus it"),
    "search_baseline_compute": SearchFlag("baseline_compute", "with --search-baseline: same (the cell's fine-tune "
                                                              "epochs) or matched (every epoch the cell's search "
                                                              "spent: the compute-matched verdict) (default {default})",
                                          {"choices": ("same", "matched")}),
    "search_baseline_k": SearchFlag("baseline_k", "with --search-baseline: the uniform baseline as the best by "
                                                  "validation OA of K fine-tunes sharing its epochs (search "
                                                  "--baseline-k; default {default})", {"type": positive_int}),
    "search_compute": SearchFlag("compute", "search --compute: a searched cell's total compute budget (N epochs or a "
                                            "wall time), split by the search between exploring (the uniform "
                                            "configuration among the candidates) and one finalist's fine-tune "
                                            "(default: off)", {"metavar": "BUDGET"}),
    "search_explore_share": SearchFlag("explore_share", "search --explore-share: with --search-compute, the share "
                                                        "spent exploring (default {default})", {"metavar": "F"}),
    "search_zero_shot": SearchFlag("zero_shot", "search --zero-shot: score every trial before fine-tuning by its "
                                                "adaptive-BN validation OA (EagleEye), screen the clearly dominated, "
                                                "and rank the final OA by that score too"),
    "rank_sample": SearchFlag("rank_sample", "more trials per searched cell fine-tuned like the finalists, for the "
                                             "rank correlation of trial score with final OA (search --rank-sample; "
                                             "default {default})"),
}


def _search_template() -> SearchConfig:
    return SearchConfig(**SEARCH_DEFAULTS)


def search_default(name: str) -> Any:
    """``search.run``'s default of a setting the study shares with it (said once, there)."""
    return SearchConfig.__dataclass_fields__[name].default


class _MethodNames:
    """The study's method names, read when a flag is checked (not at ``--help``: the table imports torch)."""

    def _names(self) -> list[str]:
        from search.study.methods import study_methods

        return list(study_methods())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


_METHODS = _MethodNames()


def _method(text: str) -> str:
    """One study method's name (checked when given: a ``choices`` container would be listed by ``--help``)."""
    import argparse

    if text not in _METHODS:
        raise argparse.ArgumentTypeError(f"unknown {text}; choose from {', '.join(_METHODS)}")
    return text


def _kd(text: str) -> tuple[bool, ...]:
    import argparse

    table = {"off": False, "on": True, "no": False, "yes": True}
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in table for t in items):
        raise argparse.ArgumentTypeError(f"--kd takes off, on or off,on; got {text!r}")
    return tuple(dict.fromkeys(table[t] for t in items))


@dataclass
class StudyConfig:
    """Every setting of ``python -m search.study`` (defaults: the issue's full study)."""

    data: str | None = opt(None, "dataset folder (default: the built-in synthetic scenes)")
    dataset: str | None = opt(None, "dataset name when the folder is ambiguous")
    image_size: int = opt(search_default("image_size"), "input side in px (default {default})", type=positive_int)
    model: str = opt(search_default("model"), "the network every compression method compresses (default {default})")
    networks: tuple[str, ...] = opt(("alexnet", "vgg11", "vgg16", "googlenet", "squeezenet1_1", "resnet18", "resnet50"),
                                    "baseline networks, comma list (default {default})", list=True)
    teacher: str | None = opt("resnet50", "distill-teacher's teacher network ('none': no such cells; default "
                                          "{default})")
    ratios: tuple[float, ...] = opt((), "training ratios, comma list (default: the dataset's literature ratios, e.g. "
                                        "0.5,0.8 for UC Merced)", list=True, item=float)
    repeats: int = opt(3, "seeded splits per training ratio (default {default})", type=positive_int)
    seed: int = opt(0, "split k uses seed+k (split, init, augmentation) (default {default})")
    epochs: int = opt(search_default("base_epochs"), "from-scratch training epochs (bases, KD students) "
                                                      "(default {default})", type=positive_int)
    # every compressed model's fine-tune budget: as long as the base's training (measured: 10 left uniform L1
    # 8 pts short at 10x)
    finetune_epochs: int = opt(30, "fine-tune budget of every compressed model (default {default})")
    lr: float = opt(DEFAULT_LR, "peak learning rate from scratch (default {default})")
    finetune_lr: float = opt(search_default("finetune_lr"), "peak learning rate of fine-tunes (default {default})")
    batch_size: int = opt(search_default("batch_size"), "training batch size (default {default})", type=positive_int)
    val_ratio: float = search_default("val_ratio")
    bn_batches: int = search_default("bn_batches")
    rates: tuple[float, ...] = opt((2.0, 4.0, 8.0), "target compression rates (original/compressed params), comma "
                                                    "list (default {default})", list=True, item=float)
    experiments: tuple[str, ...] = opt(DEFAULT_EXPERIMENTS, "comma list (default {default}; the quality protocol "
                                                            "only when named)", list=True, choices=EXPERIMENTS)
    # None: the published methods of the compared families and their searched cells (study_methods.default_methods)
    family_methods: tuple[str, ...] | None = opt(None, "comma list (--list-methods; default: every published method "
                                                       "of the weight, local and global families and their "
                                                       "searched cells)", list=True, choices=_METHODS,
                                                 metavar="METHODS")
    pruning_methods: tuple[str, ...] | None = opt(None, "comma list (default: magnitude pruning and every published "
                                                        "method of the pruning family, and its searched cell)",
                                                  list=True, choices=_METHODS, metavar="METHODS")
    kd: tuple[bool, ...] = opt((False, True), "the pruning comparison with and/or without KD: off, on or off,on "
                                              "(default off,on)", type=_kd)
    augments: tuple[str, ...] = opt(("none", "d4", "d4+crop"), "augmentation variants of the ablation (default "
                                                               "{default})",
                                    list=True, choices=tuple(k for k in AUGMENTS if k != "default"))
    augment_method: str = opt("l1", "the compressed model of the ablation, at the middle rate (default {default})",
                              type=_method, metavar="METHOD")
    quality_methods: tuple[str, ...] = opt(QUALITY_METHODS, "the search-quality protocol's methods, comma list "
                                                            "(default {default})", list=True, choices=_METHODS,
                                           metavar="METHODS")
    quality_subject: str | None = opt(None, "the method the quality tables pair every other method against (same "
                                            "split: paired differences; default: the first searched one of "
                                            "--quality-methods)", type=_method, metavar="METHOD")
    slimming_reg: float | None = opt(None, "Network Slimming's L1 weight on BN scales (default: the space's)")
    weights: dict[str, str] = opt(None, "local pretrained weights of a network (repeat per network); the "
                                        "literature's figures use ImageNet-pretrained backbones at 224 px",
                                  factory=dict, repeat=True, metavar="NET=PATH")
    network_lr: dict[str, float] = opt(None, "a network's own peak learning rate from scratch (repeat per network; "
                                             "e.g. squeezenet1_1=0.01 for networks without BatchNorm, which collapse "
                                             "at the default --lr)", factory=dict, repeat=True, metavar="NET=LR")
    search: SearchConfig = opt(None, factory=_search_template)  # the searched cells' template (--search-* flags)
    device: str | None = opt(None, "cpu, cuda, cuda:N (default: cuda when available); latency is always on the CPU")
    name: str | None = opt(None, "study name (default: study-<dataset>-<model>-<size>px); the same name resumes")
    out: str = opt(search_default("out"), "folder of studies, the default MLflow store and searched cells' studies "
                                           "(default {default})")
    tracking_uri: str | None = opt(None, "MLflow URI (default $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")
    experiment: str = opt("rsc-study", "MLflow experiment (default {default})")
    progress: bool = opt(True, "no progress bars", flag="--no-progress")

    def lr_of(self, network: str) -> float:
        """The peak learning rate ``network`` is trained with from scratch (``--network-lr``, else ``--lr``)."""
        return float(self.network_lr.get(network, self.lr))

    def methods_of(self, experiment: str) -> tuple[str, ...]:
        """The methods an experiment compares: as given, else (families, pruning) the study's defaults."""
        given = {"families": self.family_methods, "pruning": self.pruning_methods,
                 "quality": self.quality_methods}[experiment]
        if given is not None:
            return tuple(given)
        from search.study.methods import default_methods

        return default_methods(experiment)

    def subject(self) -> str:
        """The quality experiment's subject: ``quality_subject``, else the first searched quality method."""
        from search.study.methods import study_methods

        methods = study_methods()
        searched = [m for m in self.quality_methods if m in methods and methods[m].kind == "search"]
        return self.quality_subject or (searched or list(self.quality_methods) or [""])[0]

    def study_name(self, dataset: str) -> str:
        return self.name or f"study-{dataset}-{self.model}-{self.image_size}px"

    def middle_rate(self) -> float:
        rates = sorted(self.rates)
        return rates[(len(rates) - 1) // 2]

    def settings(self) -> dict[str, Any]:
        """What ``study.json`` records (JSON types): every setting but ``progress`` and ``device``; of the
        search template, the fields the searched cells share (not those each cell sets)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("progress", "device", "search")}
        own["search"] = {k: v for k, v in self.search.to_dict().items() if k not in CELL_FIELDS}
        return json.loads(json.dumps(own, default=str))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None, /, **given: Any) -> StudyConfig:
        """A config from recorded settings (``study.json``'s) and keywords, by field name or by the study's flag
        names of the search template (``search_trials=12``, as studies recorded before the template did;
        None: ``search.run``'s default); ``search`` may be a SearchConfig or a dict of its fields. Keys of
        other versions are ignored."""
        data = {**(settings or {}), **given}
        names = {f.name for f in dataclasses.fields(cls)} - {"search"}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        search = data.get("search")
        if not isinstance(search, SearchConfig):
            fields = SearchConfig.__dataclass_fields__
            renamed = getattr(search_config, "RENAMED", {})  # fields renamed since a study was recorded
            nested = {renamed.get(k, k): v for k, v in (search or {}).items()}
            search = dataclasses.replace(_search_template(), **{
                k: (tuple(v) if isinstance(v, list) else v) for k, v in nested.items()
                if k in fields and k not in CELL_FIELDS})
        flat = {flag.field: (search_default(flag.field) if data[key] is None else data[key])
                for key, flag in SEARCH_FLAGS.items() if key in data}
        return cls(**kw, search=dataclasses.replace(search, **flat) if flat else search)


def search_flags() -> type:
    """A dataclass of the study's :data:`SEARCH_FLAGS`, one field each, its default the template's and its
    type and choices the SearchConfig field's: what :func:`rsc.options.add_options` makes flags of."""
    template = _search_template()
    fields = []
    for key, flag in SEARCH_FLAGS.items():
        f = SearchConfig.__dataclass_fields__[flag.field]
        meta = {k: v for k, v in f.metadata.items() if k in ("choices", "metavar", "type")}
        fields.append((key, f.type, opt(getattr(template, flag.field), flag.help, **{**meta, **flag.meta})))
    return dataclasses.make_dataclass("SearchFlags", fields)
