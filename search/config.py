"""Every setting of a compression search, with its default, in one typed dataclass.

Precedence: these defaults < a JSON config file (``--config``) < command-line flags. The final
config is logged with every run (parent-run params and ``config.json``), so every reported number
can be rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rsc.errors import ConfigError

SAMPLERS = ("nsga2", "tpe", "gp", "random")
BACKENDS = ("local", "ray")                 # where trials run (search.executors)
TARGETS = ("spread", "sampler")             # who chooses each trial's target (search.run.spread_target)
QUALITY_OBJECTIVES = {"accuracy": "val_oa"}  # objective name -> trial result key (maximised)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A compression search, end to end.

    Attributes are grouped as the pipeline runs: data and base model; search space and budget;
    sampler and trials; per-trial evaluation; final stage; bookkeeping.
    """

    # -- data and base model
    data: str | None = None              # dataset folder; None = built-in synthetic set
    dataset: str | None = None           # registry name when the folder alone is ambiguous
    image_size: int = 64                 # working resolution (synthetic data: its native size)
    train_ratio: float = 0.8             # per-class share for training (+val); the rest is test
    val_ratio: float = 0.1               # share of the training part held out to rank trials
    model: str = "resnet18"
    weights: str | None = None           # rsc checkpoint of the base model; None = train one
    base_epochs: int = 30                # epochs when the base model must be trained
    base_lr: float = 0.05

    # -- search space and budget
    budgets: tuple[str, ...] = ()        # e.g. ("params<5M", "macs<50%"), ANDed
    methods: tuple[str, ...] = ("prune", "tucker", "distill", "quant")
    max_combo: int = 2                   # at most this many methods chained in one plan
    depth_bins: int = 4                  # >0: one pruning ratio / Tucker rank pair / sparsity per contiguous
                                         # depth bin of the layers (4 = ResNet stages); 0 = one per layer
    objectives: tuple[str, ...] = ("accuracy", "params")

    # -- sampler and trials
    sampler: str = "nsga2"
    trials: int = 40
    population_size: int = 8             # NSGA-II generation size (small: trials are expensive)
    startup_trials: int = 8              # TPE/GP random start
    min_target: float = 0.1              # each trial aims at a searched fraction in [min_target, 1] of the
                                         # ceiling on the first analytic cost objective (1 = all at the budget)
    targets: str = "spread"              # how trials get their target: "spread" (a low-discrepancy sequence
                                         # over [min_target, 1], the same for every sampler) or "sampler"

    # -- per-trial evaluation
    fidelity_epochs: int = 2             # fine-tune epochs per trial
    finetune_lr: float = 0.01
    batch_size: int = 64
    min_accuracy: float | None = None    # validation-OA floor: trials below it are infeasible (off the front)
    early_stop_margin: float | None = 0.1  # stop a trial once a finished one is cheaper and this much more accurate
    calibration_batches: int = 2
    bn_batches: int = 4                  # unaugmented training batches on which BatchNorm statistics are
                                         # re-estimated after every fine-tune epoch (0: off)
    latency: bool = True                 # measure latency (and speed-up) for every trial

    # -- final stage
    final_epochs: int = 20               # fine-tune epochs of the Pareto set before the test split
    final_max: int | None = None         # cap on the Pareto models retrained (None = all)
    log_models: bool = True              # log final Pareto models as MLflow models

    # -- bookkeeping
    seed: int = 0
    split_seed: int | None = None        # split and base-model seed (None = seed); fix it to compare sampler seeds
    study: str | None = None             # Optuna study / MLflow parent run name
    resume: bool = False
    out: str = "runs"                    # root of the default storage, database and artifacts
    storage: str | None = None           # Optuna RDB URL; default sqlite:///<out>/<study>/optuna.db
    storage_timeout: float = 10.0        # seconds to wait for a locked sqlite storage before failing
    tracking_uri: str | None = None      # MLflow URI; default sqlite:///<out>/mlflow.db
    experiment: str = "rsc-search"
    device: str | None = None            # training device; None = cuda when available (latency: the CPU)
    backend: str = "local"               # local (in this process) or ray (trials as Ray tasks, several at once)
    ray_address: str | None = None       # None: a private local Ray; auto / host:port / ray://host:10001
    workers: int | None = None           # Ray trials in flight (None: cluster CPUs / trial_cpus)
    trial_cpus: float = 1.0              # CPUs reserved per Ray trial (and its torch threads)
    trial_gpus: float = 0.0              # GPUs per Ray trial (> 0: trials train on CUDA)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("trials", "image_size", "batch_size", "population_size", "max_combo"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("fidelity_epochs", "final_epochs", "base_epochs", "startup_trials", "calibration_batches",
                     "bn_batches", "depth_bins"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
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
        if self.workers is not None and int(self.workers) < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers!r}")
        if not float(self.trial_cpus) > 0 or float(self.trial_gpus) < 0:
            raise ConfigError(f"trial_cpus must be > 0 and trial_gpus >= 0, got {self.trial_cpus!r}, {self.trial_gpus!r}")
        if self.backend == "local" and (self.ray_address or self.workers):
            raise ConfigError("--ray-address and --workers need --backend ray")
        if self.targets not in TARGETS:
            raise ConfigError(f"unknown targets {self.targets!r}; choose one of {', '.join(TARGETS)}")
        if not 0.0 < float(self.min_target) <= 1.0:
            raise ConfigError(f"min_target must lie in (0, 1], got {self.min_target!r}")
        if self.early_stop_margin is not None and self.early_stop_margin < 0:
            raise ConfigError(f"early_stop_margin must be >= 0 or None, got {self.early_stop_margin!r}")

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        budget = "_".join(self.budgets) or "nobudget"
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
