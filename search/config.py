"""Every setting of a compression search, with its default, in one typed dataclass.

Precedence: these defaults < a JSON config file (``--config``) < command-line flags. The final
config is logged with every run (parent-run params and ``config.json``), so every reported number
can be rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rsc.errors import ConfigError
from rsc.options import opt
from rsc.recipe import DEFAULT_BATCH_SIZE, DEFAULT_LR
from spaces.registry import DEFAULT_METHODS
from search.budget import REPAIR_PASSES

SAMPLERS = ("nsga2", "tpe", "gp", "random")
BACKENDS = ("local", "ray")                 # where trials run (search.executors)
RAY_DATA = ("auto", "object-store", "shared")  # how Ray workers get the data and the base checkpoint
AIMS = ("spread", "sampler")                # who chooses each trial's compression aim (search.aims.spread_target)
ALLOCATE = ("macs", "params", "energy", "latency")  # layer costs of --allocate (spaces.allocation)
ALLOCATE_DAMAGES = ("importance", "sensitivity")   # how --allocate prices a pruning cut's damage
FINAL_PICKS = ("spread", "top", "top-per-method")            # which trials the final stage fine-tunes (search.final.final_candidates)
QUALITY_OBJECTIVES = {"accuracy": "val_oa"}  # objective name -> trial result key (maximised)
#: a budget's comparison in a default study name (``params<5M`` and ``params>5M`` are two studies)
_OPERATOR_NAMES = {"<=": "le", ">=": "ge", "<": "lt", ">": "gt"}
_OPERATOR = re.compile(r"<=|>=|<|>")
#: fields renamed since config files were first written: old name -> new
RENAMED = {"targets": "aims"}


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A compression search, end to end: every setting, its default and its help, in one place.

    Attributes are grouped as the pipeline runs: data and base model; search space and budget;
    sampler and trials; per-trial evaluation; final stage; bookkeeping. The command line is
    generated from these fields.
    """

    # -- data and base model
    data: str | None = opt(None, "dataset folder (default: built-in synthetic set)")
    dataset: str | None = opt(None, "dataset name when the folder is ambiguous")
    image_size: int = opt(64, "input side in px (default {default})")
    train_ratio: float = opt(0.8, "per-class share for training (+val); the rest is test (default {default})")
    val_ratio: float = opt(0.1, "share of the training part held out to rank trials (default {default})")
    model: str = opt("resnet18", "torchvision architecture (default {default})")
    weights: str | None = opt(None, "base model checkpoint (default: train one and cache it)")
    base_epochs: int = opt(30, "epochs to train the base model (default {default}; 5 on the synthetic set)")
    base_lr: float = opt(DEFAULT_LR, "peak learning rate of the base model's training (default {default})")

    # -- search space and budget
    budgets: tuple[str, ...] = opt((), "e.g. 'params<5M', 'macs<50%%', 'size<2MB', 'latency<20ms'; repeat to AND",
                                   flag="--budget", repeat=True, metavar="BUDGET")
    methods: tuple[str, ...] = opt(DEFAULT_METHODS, "comma list of compression methods: a space's name or alias "
                                                    "(default {default})", list=True)
    max_combo: int = opt(2, "most methods chained in one plan (default {default})")
    depth_bins: int = opt(4, "search one pruning ratio, Tucker rank pair or sparsity per contiguous depth bin of "
                             "the layers (4 = ResNet-18's stages) instead of one per layer; 0 = per layer "
                             "(default {default})", metavar="N")
    allocate: str | None = opt(None, "allocate prune's and tucker's per-layer cuts by a layer cost - macs, params, "
                                     "energy (the analytical model: energy-aware pruning) or latency (the --target "
                                     "lut:FILE table) - searching one kept fraction of that cost per method "
                                     "instead of per-bin ratios and ranks (prune-alloc, tucker-alloc)",
                               choices=ALLOCATE, metavar="COST")
    allocate_damage: str = opt("importance", "what an allocated pruning cut costs in accuracy: importance (the "
                                             "share of L1 mass removed) or sensitivity (each layer group pruned "
                                             "alone, BatchNorm re-estimated, the rise of the loss on the "
                                             "calibration batches measured; about a minute per base model) "
                                             "(default {default})", choices=ALLOCATE_DAMAGES)
    objectives: tuple[str, ...] = opt(("accuracy", "params"), "comma list, accuracy first (default {default})",
                                      list=True)

    # -- sampler and trials
    sampler: str = opt("nsga2", "default {default}", choices=SAMPLERS)
    trials: int = opt(40, "finished trials to reach (default {default})")
    population_size: int = opt(8, "NSGA-II generation size (default {default}; small: trials are expensive)")
    startup_trials: int = opt(8, "random trials before TPE/GP model the space (default {default})")
    min_target: float = opt(0.1, "each trial aims at a searched fraction in [F, 1] of the ceiling on the first cost "
                                 "objective (the budget, else the base model), so the front spans compression "
                                 "levels; 1 puts every trial on the budget (default {default})", metavar="F")
    aims: str = opt("spread", "who picks each trial's compression aim (its target fraction): spread (a "
                              "low-discrepancy sequence over [--min-target, 1], the same for every sampler, so every "
                              "front spans the compression levels) or sampler (a parameter the sampler learns) "
                              "(default {default}; --targets is its deprecated name)",
                    choices=AIMS, deprecated=("--targets",))

    # -- per-trial evaluation
    fidelity_epochs: int = opt(2, "fine-tune epochs per trial (default {default})")
    finetune_lr: float = opt(0.01, "peak learning rate of every fine-tune (default {default})")
    batch_size: int = opt(DEFAULT_BATCH_SIZE, "training batch size (default {default})")
    min_accuracy: float | None = opt(None, "validation-OA floor in [0, 1): trials below it are infeasible and kept "
                                           "off the Pareto front", metavar="OA")
    early_stop_margin: float | None = opt(0.1, "OA margin for stopping dominated trials (default {default}; "
                                               "<0 disables)")
    zero_shot: bool = opt(False, "score every trial right after compression, before any fine-tuning, by its "
                                 "validation OA with BatchNorm re-estimated on the --bn-batches (EagleEye's "
                                 "adaptive-BN evaluation, about a second): recorded (zero_shot_oa; ranked against "
                                 "the final OA with --rank-sample), and a trial whose score a finished, cheaper trial "
                                 "beats by --zero-shot-margin is screened - stopped before fine-tuning and not "
                                 "counted towards --trials (at most --trials such)")
    zero_shot_margin: float = opt(0.1, "adaptive-BN OA margin of the --zero-shot screen (default {default}; <0: score, "
                                       "never screen)")
    calibration_batches: int = opt(2, "unaugmented training batches for data-dependent choices and int8 "
                                      "calibration (default {default})")
    finetune_kd: bool = opt(False, "distil from the uncompressed model (Hinton KD) during every fine-tune, trials and "
                                   "final stage alike: pruning + KD")
    bn_batches: int = opt(4, "re-estimate BatchNorm statistics on this many unaugmented training batches after "
                             "every fine-tune epoch and after training the base model, so each is scored with "
                             "statistics of its final weights (default {default}; 0: off)")
    latency: bool = opt(True, "skip latency/speed-up measurement per trial", flag="--no-latency")
    hardware: str = opt("cpu", "where latency and speed-up are measured: DEVICE[:N][,KEY=VALUE...] with DEVICE cpu, "
                               "cuda, cuda:N or ray:RESOURCE (the Ray node offering that custom resource) and keys "
                               "threads, runtime (eager, torchscript, onnxruntime), provider, format "
                               "(channels_last, contiguous), batch, device (ray: only); e.g. "
                               "cpu:threads=4,runtime=onnxruntime (default {default}: this CPU, 1 thread, eager, "
                               "channels-last, batch 1)", flag="--target", metavar="SPEC")

    # -- final stage
    final_epochs: int = opt(20, "fine-tune epochs of the Pareto set (default {default})")
    final_max: int | None = opt(None, "retrain at most this many Pareto models (default all)")
    final_pick: str = opt("spread", "which trials the final stage fine-tunes: spread (--final-max models spread along "
                                    "the Pareto front: the trade-off) or top (the --final-max finished trials inside "
                                    "the budget with the best trial score, on the front or not: the best model at the "
                                    "budget), or top-per-method (the same, taken in turn from each method combination's best: a short fine-tune "
                                    "favours methods that recover fast, so every method reaches the full fine-tune) "
                                    "(default {default})", choices=FINAL_PICKS)
    final_rungs: int = opt(1, "successive halving before the final fine-tune: R rungs, rung i fine-tunes the "
                              "candidates left for final-epochs/2^(R-1-i) epochs and keeps the better half by "
                              "validation OA, the last rung is the final fine-tune; with --final-pick top and a "
                              "larger --final-max, more candidates near the budget for the epochs (default {default}: "
                              "none)", metavar="R")
    final_folds: int = opt(0, "choose the final model by its OA cross-validated over K folds of the training part "
                              "(every training image held out once) instead of the validation split's: each final "
                              "model is also fine-tuned K times, from a base trained without each fold (K base "
                              "trainings, cached); the model shipped stays the one fine-tuned on the search's split "
                              "(default {default}: off; K >= 2)", metavar="K")
    rank_sample: int = opt(0, "also fine-tune this many more finished trials, spread over their trial scores, like "
                              "the final set, and report how well trial scores rank the final OA (Spearman, Kendall) "
                              "(default {default})", metavar="N")
    latency_repair: bool = opt(True, "do not re-project a final model that measures over a latency budget on the "
                                     "target (with --target lut:FILE, where the table under-predicted it) onto the "
                                     f"budget scaled by that error, and fine-tune it again (up to {REPAIR_PASSES} times while it "
                                     "measures over)",
                               flag="--no-latency-repair")
    baseline: bool = opt(True, "do not fine-tune the uniform configuration at the same budget (uniform L1 channel "
                               "pruning; uniform Tucker-2 where the methods are low-rank only) beside the final models, "
                               "nor report the search's chosen model minus it", flag="--no-baseline")
    baseline_compute: str = opt("matched", "the uniform baseline's fine-tune: matched (every epoch the search spent on "
                                           "trials, halving rungs and final fine-tunes: the verdict at equal compute, "
                                           "which is the one that decides whether the search paid) or same "
                                           "(--final-epochs, like each final model: cheaper, and it flatters the "
                                           "search) (default {default})",
                                choices=("same", "matched"))
    log_models: bool = opt(True, "do not log final models as MLflow models", flag="--no-log-models")
    baseline_k: int = opt(1, "the uniform baseline as the best by validation OA of K fine-tunes (their seeds differ) "
                             "sharing its epochs (best-of-k at the same total compute) (default {default}: one)",
                          metavar="K")
    compute: str | None = opt(None, "a total compute budget the search splits itself (search.spending): N epochs "
                                    "(epoch-equivalents of fine-tuning; 120 or 120ep) or a wall time (900s, 30min, "
                                    "2h); --explore-share of it explores (trials of --fidelity-epochs, the uniform "
                                    "configuration among them as a candidate), the rest fine-tunes one finalist - the "
                                    "best trial score inside the budget; sets --trials (epochs), --final-max 1, "
                                    "--final-pick top and --final-epochs; the compute-matched baseline gets the same "
                                    "budget (default: off)", metavar="BUDGET")
    explore_share: float = opt(0.2, "with --compute: the share spent exploring (default {default})", metavar="F")

    # -- bookkeeping
    seed: int = opt(0, "one seed for sampler, split, torch (default {default})")
    split_seed: int | None = opt(None, "seed of the split and base model only (default: --seed); fix it to compare "
                                       "sampler seeds on one split")
    study: str | None = opt(None, "study name (default derived from data, model, budget, sampler, seed)")
    resume: bool = opt(False, "continue an interrupted study")
    out: str = opt("runs", "folder for the default storage, database and artifacts (default {default})")
    storage: str | None = opt(None, "Optuna RDB URL (default sqlite:///<out>/<study>/optuna.db)")
    storage_timeout: float = opt(10.0, "seconds to wait for a locked sqlite storage before failing "
                                       "(default {default})")
    tracking_uri: str | None = opt(None, "MLflow URI (default $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db; "
                                         "http://host:port for a server)")
    experiment: str = opt("rsc-search", "MLflow experiment (default {default})")
    device: str | None = opt(None, "training device: cpu, cuda, cuda:N (default: cuda when available); latency is "
                                   "measured on --target")
    backend: str = opt("local", "where trials run: local (this process, one at a time; default) or ray (several at "
                                "once on a Ray cluster)", choices=BACKENDS)
    ray_address: str | None = opt(None, "Ray cluster to join: auto, host:port or ray://host:10001 (default: start "
                                        "a private local instance)")
    ray_timeout: float = opt(60.0, "seconds to join the Ray cluster and hear from every node before failing "
                                   "(default {default})")
    ray_data: str = opt("auto", "how Ray workers get the data set and the base checkpoint: object-store (sent once "
                                "through Ray's object store, cached on each node: no shared disk), shared (read by "
                                "path: the same files at the same paths on every node), auto (object-store when "
                                "joining a cluster by --ray-address, else shared) (default {default})",
                        choices=RAY_DATA)
    trial_retries: int = opt(2, "times a Ray trial is run again when its worker process or node is lost (not when "
                                "the trial itself fails) (default {default})")
    workers: int | None = opt(None, "trials in flight on Ray (default: cluster CPUs / --trial-cpus)")
    trial_cpus: float = opt(1.0, "CPUs reserved per Ray trial, also its torch threads (default {default})")
    trial_gpus: float = opt(0.0, "GPUs per Ray trial (default {default}; >0 trains trials on CUDA)")
    progress: bool = opt(True, "no progress bars", flag="--no-progress")

    def __post_init__(self) -> None:
        for name in ("trials", "image_size", "batch_size", "population_size", "max_combo"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("fidelity_epochs", "final_epochs", "base_epochs", "startup_trials", "calibration_batches",
                     "bn_batches", "depth_bins", "rank_sample"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.baseline_compute not in ("same", "matched"):
            raise ConfigError(f"unknown baseline_compute {self.baseline_compute!r}; choose same or matched")
        if int(self.baseline_k) < 1:
            raise ConfigError(f"baseline_k must be >= 1, got {self.baseline_k!r}")
        if self.compute is not None:
            from search.spending import ComputeBudget

            ComputeBudget.parse(self.compute)
            if not 0.0 < float(self.explore_share) < 1.0:
                raise ConfigError(f"explore_share must lie in (0, 1), got {self.explore_share!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 0.0 < self.train_ratio < 1.0 or not 0.0 < self.val_ratio < 1.0:
            raise ConfigError(f"train_ratio and val_ratio must lie in (0, 1), got {self.train_ratio!r}, {self.val_ratio!r}")
        if not self.methods:
            raise ConfigError("methods is empty; give at least one, e.g. --methods prune")
        if len(self.objectives) < 2 or self.objectives[0] not in QUALITY_OBJECTIVES:
            raise ConfigError(
                f"objectives must start with accuracy and name at least one cost, got {','.join(self.objectives)!r}"
            )
        if len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"objectives repeat a name: {','.join(self.objectives)!r}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy < 1.0:
            raise ConfigError(f"min_accuracy must lie in [0, 1), got {self.min_accuracy!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.ray_data not in RAY_DATA:
            raise ConfigError(f"unknown ray_data {self.ray_data!r}; choose one of {', '.join(RAY_DATA)}")
        if int(self.trial_retries) < 0 or not float(self.ray_timeout) > 0:
            raise ConfigError(f"trial_retries must be >= 0 and ray_timeout > 0, got {self.trial_retries!r}, "
                              f"{self.ray_timeout!r}")
        if self.workers is not None and int(self.workers) < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers!r}")
        if not float(self.trial_cpus) > 0 or float(self.trial_gpus) < 0:
            raise ConfigError(f"trial_cpus must be > 0 and trial_gpus >= 0, got {self.trial_cpus!r}, {self.trial_gpus!r}")
        from costs.targets import parse_target

        remote = parse_target(self.hardware).remote is not None
        if self.backend == "local" and (self.workers or (self.ray_address and not remote)):
            raise ConfigError("--ray-address and --workers need --backend ray (--ray-address also joins the "
                              "cluster of a --target ray:RESOURCE)")
        if self.ray_data == "object-store" and self.backend != "ray":
            raise ConfigError("--ray-data object-store needs --backend ray")
        if self.allocate is not None and self.allocate not in ALLOCATE:
            raise ConfigError(f"unknown allocate cost {self.allocate!r}; choose one of {', '.join(ALLOCATE)}")
        if self.allocate_damage not in ALLOCATE_DAMAGES:
            raise ConfigError(f"unknown allocate damage {self.allocate_damage!r}; choose one of "
                              f"{', '.join(ALLOCATE_DAMAGES)}")
        if self.allocate_damage != "importance" and self.allocate is None:
            raise ConfigError("--allocate-damage needs --allocate COST (it prices the cuts an allocation makes)")
        if self.allocate == "latency" and parse_target(self.hardware).table is None:
            raise ConfigError("--allocate latency needs a latency table: --target lut:FILE (build one with "
                              "python -m search.profile)")
        if int(self.final_folds) < 0 or int(self.final_folds) == 1:
            raise ConfigError(f"final_folds must be 0 (off) or at least 2, got {self.final_folds!r}")
        if int(self.final_rungs) < 1:
            raise ConfigError(f"final_rungs must be >= 1, got {self.final_rungs!r}")
        if self.final_pick not in FINAL_PICKS:
            raise ConfigError(f"unknown final_pick {self.final_pick!r}; choose one of {', '.join(FINAL_PICKS)}")
        if self.aims not in AIMS:
            raise ConfigError(f"unknown aims {self.aims!r}; choose one of {', '.join(AIMS)}")
        if not 0.0 < float(self.min_target) <= 1.0:
            raise ConfigError(f"min_target must lie in (0, 1], got {self.min_target!r}")
        if self.early_stop_margin is not None and self.early_stop_margin < 0:
            raise ConfigError(f"early_stop_margin must be >= 0 or None, got {self.early_stop_margin!r}")

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        budget = "_".join(_OPERATOR.sub(lambda m: f"-{_OPERATOR_NAMES[m.group(0)]}-", b.replace(" ", ""))
                          for b in self.budgets) or "nobudget"  # params<5M -> params-lt-5M: every part kept
        data = Path(self.data).name if self.data else "synthetic"
        raw = f"{data}-{self.model}-{budget}-{self.sampler}-s{self.seed}"
        return "".join(c if c.isalnum() or c in "-_.%" else "_" for c in raw)

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study_name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / 'optuna.db').resolve()}"

    def data_request(self, split_digest: str) -> dict[str, Any]:
        """The ``data`` part of a trial request: where a worker finds the data and which split to rebuild."""
        return {"path": str(Path(self.data).resolve()) if self.data else None, "dataset": self.dataset,
                "image_size": self.image_size, "train_ratio": self.train_ratio, "val_ratio": self.val_ratio,
                "split_seed": self.data_seed, "digest": split_digest}

    def space_methods(self) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
        """The methods and per-method space options the joint space is built from: with ``allocate``, a method
        whose space has an allocated variant (:func:`spaces.registry.allocated_variant`: channel pruning,
        Tucker-2) becomes that variant (by its short name), allocating by that cost."""
        if not self.allocate:
            return tuple(self.methods), {}
        from spaces.registry import allocated_variant, resolve_space, space_class

        methods, options = [], {}
        for m in self.methods:
            variant = allocated_variant(resolve_space(m))
            if variant is None:
                methods.append(m)
                continue
            cls = space_class(variant)
            name = cls.aliases[0] if cls.aliases else variant
            methods.append(name)
            options[name] = {"cost": self.allocate}
            if self.allocate_damage != "importance" and self.allocate_damage in getattr(cls, "damages", ()):
                options[name]["damage"] = self.allocate_damage
        return tuple(methods), options

    @property
    def data_seed(self) -> int:
        """Seed of the train/val/test split and of the base model's training."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        data = {RENAMED.get(k, k): v for k, v in data.items()}  # config files written before a rename
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(names))}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "SearchConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        data.update(overrides)
        return cls.from_dict(data)
