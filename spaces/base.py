"""The protocol every compression space implements, and the plan that records its choices.

A *space* is one compression method seen as a search space. It does three things:

* ``suggest(trial, model, context) -> params`` samples the method's choices from an Optuna trial
  (per-layer ratios, ranks, a student architecture, temperatures...). ``params`` is plain JSON.
* ``transform(model, params, context, record=None) -> Transformed`` builds a *new* compressed model
  (the input is never mutated) and returns it with a JSON ``record`` of every data-dependent result
  (kept channel indices, calibrated choices). Given that record back, ``transform`` replays the
  result without data, so ``create_model(base) -> apply steps with records -> load state dict``
  rebuilds the compressed model exactly. ``apply(model, params, context)`` is the short form that
  returns only the model.
* ``scale(params, factor)`` moves every choice of the method towards stronger compression
  (``factor > 1``) or weaker (``factor < 1``; ``0`` is no compression), clipped to the method's
  valid range. It is the analytic hook the search uses to respect a params/MACs budget before
  any training: :func:`spaces.project.project_plan` finds one global factor for all the steps of a
  plan at which a structural build fits (AMC-style clipping, He et al. 2018), so a sampled trial
  is moved to the budget instead of wasted.

What a method *is* - applied after fine-tuning, a distillation loss, zeros to keep, searchable
per depth bin, its short names, the cost its compression rate is measured on, trained before its
transform (soft filter pruning, Network Slimming: :class:`TrainingHooks`) - is said by class
attributes (:class:`Space`), which the compress path, the fine-tune, the search and the study read;
no code outside a space's own module tests its name. A space's *presets* (:class:`Preset`) are its
named starting points: the methods a study compares (``l1``: channel pruning by L1 norm).

A :class:`Plan` is the base architecture plus the list of applied steps, each step the space name,
its params and its record. It is frozen and round-trips through JSON, which is what export,
reload and shipping trials to other machines need.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from spaces.errors import SpaceError

Params = dict[str, Any]
Record = dict[str, Any]
Batch = tuple[torch.Tensor, torch.Tensor]

_BASE_KEYS = ("model", "num_classes", "image_size")


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a space may know about the task besides the model.

    Attributes:
        num_classes: Classes of the classifier head (the head is never compressed away).
        image_size: Side of the square input; used for example inputs, MACs and tracing.
        device: Where the model lives; quantised models must stay on ``"cpu"``.
        calibration: A few ``(x, y)`` batches, normalised like the training data. Needed only by
            data-dependent choices (Taylor importance, int8 calibration); ``None`` when rebuilding.
        seed: Seeds the example inputs so that every build is deterministic.
        latency_table: A latency table of the target (:class:`costs.latency.table.LatencyTable`),
            for choices allocated by latency (:mod:`spaces.allocation`); ``None`` elsewhere.
    """

    num_classes: int
    image_size: int
    device: str = "cpu"
    calibration: Sequence[Batch] | None = None
    seed: int = 0
    latency_table: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if int(self.num_classes) < 2:
            raise SpaceError(f"context: num_classes must be >= 2, got {self.num_classes!r}")
        if int(self.image_size) < 8:
            raise SpaceError(f"context: image_size must be >= 8, got {self.image_size!r}")

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A deterministic random input of the right shape, for tracing and counting."""
        gen = torch.Generator().manual_seed(self.seed)
        x = torch.randn(batch_size, 3, self.image_size, self.image_size, generator=gen)
        return x.to(self.device)

    def calibration_batches(self, what: str) -> Sequence[Batch]:
        """The calibration batches, or a SpaceError saying which choice needed them."""
        if not self.calibration:
            raise SpaceError(f"{what} needs calibration batches (context.calibration is empty)")
        return self.calibration


@dataclass(frozen=True, kw_only=True)
class Step:
    """One applied compression step: the space's name, its params, and its data-free record.

    ``options`` are the space's constructor options (``get_space(space, **options)``), kept so a
    step rebuilds with the same space settings it was searched with.
    """

    space: str
    params: Params = field(default_factory=dict)
    record: Record | None = None
    options: Params = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"space": self.space, "params": copy.deepcopy(self.params)}
        if self.options:
            out["options"] = copy.deepcopy(self.options)
        if self.record is not None:
            out["record"] = copy.deepcopy(self.record)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        if not isinstance(data, Mapping) or "space" not in data:
            raise SpaceError(f"plan step must be an object with a 'space' key, got {data!r:.200}")
        unknown = set(data) - {"space", "params", "record", "options"}
        if unknown:
            raise SpaceError(f"plan step {data['space']!r}: unknown keys {sorted(unknown)}")
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise SpaceError(f"plan step {data['space']!r}: params must be an object, got {params!r:.200}")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise SpaceError(f"plan step {data['space']!r}: options must be an object, got {options!r:.200}")
        record = data.get("record")
        return cls(space=str(data["space"]), params=copy.deepcopy(dict(params)),
                   record=copy.deepcopy(dict(record)) if record is not None else None,
                   options=copy.deepcopy(dict(options)))


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Base architecture + compression steps: enough to rebuild the compressed model exactly.

    ``base`` is ``{"model": "resnet18", "num_classes": 21, "image_size": 64}``; ``steps`` are
    applied in order (e.g. ``prune.channel`` then ``quant.int8``).
    """

    base: dict[str, Any]
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        missing = [k for k in _BASE_KEYS if k not in self.base]
        if missing:
            raise SpaceError(f"plan base {self.base!r} lacks {missing}")
        object.__setattr__(self, "base", copy.deepcopy(dict(self.base)))
        object.__setattr__(self, "steps", tuple(self.steps))

    def to_dict(self) -> dict[str, Any]:
        return {"base": copy.deepcopy(self.base), "steps": [s.to_dict() for s in self.steps]}

    def to_json(self, *, indent: int | None = 2) -> str:
        try:
            return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"plan is not plain JSON: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if not isinstance(data, Mapping) or "base" not in data:
            raise SpaceError(f"a plan is an object with 'base' and 'steps', got {data!r:.200}")
        unknown = set(data) - {"base", "steps"}
        if unknown:
            raise SpaceError(f"plan: unknown keys {sorted(unknown)}")
        steps = data.get("steps") or []
        if not isinstance(steps, list):
            raise SpaceError(f"plan steps must be a list, got {steps!r:.200}")
        return cls(base=dict(data["base"]), steps=tuple(Step.from_dict(s) for s in steps))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"plan is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def with_step(self, step: Step) -> Plan:
        """A new plan with ``step`` appended."""
        return Plan(base=self.base, steps=(*self.steps, step))

    def context(self, **overrides: Any) -> Context:
        """The context implied by the base (num_classes, image_size), with overrides."""
        kw: dict[str, Any] = {"num_classes": int(self.base["num_classes"]),
                              "image_size": int(self.base["image_size"])}
        kw.update(overrides)
        return Context(**kw)


@dataclass(frozen=True)
class TrainingHooks:
    """What a space does to the model while it trains before the space's transform (:attr:`Space.pretransform_share`).

    Each is called with the model being trained: ``start`` once before the first epoch,
    ``after_backward`` between every backward pass and optimiser step (a sparsity regulariser adds its
    subgradient there), ``end_of_epoch`` after each epoch's last step (before BatchNorm statistics are
    re-estimated and the epoch validated).
    """

    start: Callable[[nn.Module], None] | None = None
    after_backward: Callable[[nn.Module], None] | None = None
    end_of_epoch: Callable[[nn.Module], None] | None = None


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named starting configuration of a space: one method a study compares with it.

    ``start(space, model, context) -> params`` gives the params on a trained model. A study moves them onto
    its compression rate with :meth:`Space.scale`, which it only strengthens, so a start is weak (5% pruned,
    ranks at 95%) - unless ``fixed_rate``: the preset decides its own rate (EVBMF ranks) and is not moved.

    Attributes:
        name: The method's name, unique over all spaces' presets (a study's cell ids carry it).
        family: Where the method sits in the research taxonomy: ``weight``, ``local`` or ``global``
            compression, or ``pruning`` (a criterion of the structured-pruning comparison).
        what: One line saying what the method is (with its reference).
        start: The starting params.
        options: The space's constructor options (``get_space(name, **options)``).
        fixed_rate: The preset decides its own rate.
        variant: A variant of a published method: listed, not in a study's default comparisons.
        uniform: The space's uniform configuration (one ratio or rank fraction for every layer): what a
            search over the space is compared with. The final stage fine-tunes it beside the searched
            finalists, projected onto the same budget (:func:`spaces.registry.uniform_baseline`).
    """

    name: str
    family: str
    what: str
    start: Callable[[Any, nn.Module, Context], Params]
    options: Mapping[str, Any] = field(default_factory=dict)
    fixed_rate: bool = False
    variant: bool = False
    uniform: bool = False


@dataclass(frozen=True)
class Transformed:
    """A compressed model and the JSON record that replays it without data."""

    model: nn.Module
    record: Record | None = None


class Space(ABC):
    """One compression method as a searchable space (see the module docstring).

    Subclasses set ``name`` through :func:`spaces.registry.register_space` and implement
    :meth:`suggest`, :meth:`transform` and, when the method has a strength knob, :meth:`scale`.
    Trial parameter names are prefixed with the space name (``"prune.channel/ratio/layer1.0.conv1"``)
    so that steps of different spaces can share one trial. :meth:`trial_params` is the inverse of
    :meth:`suggest`: it gives the trial values that make ``suggest`` return given params (for
    ``optuna.trial.FixedTrial`` and ``study.enqueue_trial`` of a reference point).
    """

    name: ClassVar[str] = ""
    #: Short names the command line accepts for this method (``--methods prune``).
    aliases: ClassVar[tuple[str, ...]] = ()
    #: Applied after fine-tuning, as a plan's last step, on the CPU (int8 quantisation: a
    #: quantised model cannot be trained further, and its kernels exist on the CPU only).
    post_training: ClassVar[bool] = False
    #: The method is a fine-tuning loss from the uncompressed model (:meth:`finetune_loss`).
    distill: ClassVar[bool] = False
    #: The method zeroes weights that fine-tuning must keep at zero (unstructured pruning).
    keeps_sparsity: ClassVar[bool] = False
    #: The constructor takes ``bins``: one value per contiguous depth bin of the layers.
    binnable: ClassVar[bool] = False
    #: What a compression rate of the method is measured on: ``params`` (original / compressed parameter
    #: count), or ``nonzero_params`` where the method zeroes weights in tensors it keeps (unstructured pruning).
    rate_cost: ClassVar[str] = "params"
    #: The share of a fine-tune spent training the model *before* :meth:`transform`, under
    #: :meth:`training_hooks`; the rest fine-tunes the transformed model (0: compress, then fine-tune;
    #: soft filter pruning: 1, the filters removed at the end; Network Slimming: 0.5, sparsity first).
    #: :func:`spaces.finetune.finetune_plan` honours it.
    pretransform_share: ClassVar[float] = 0.0
    #: Named starting configurations (:class:`Preset`): the methods a study compares with this space.
    presets: ClassVar[tuple[Preset, ...]] = ()

    @abstractmethod
    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        """Sample this method's choices from an Optuna trial (cheap: no training, no data)."""

    @abstractmethod
    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        """Return a new compressed model and the record of its data-dependent results.

        Args:
            model: The model to compress; not mutated.
            params: Choices, as returned by :meth:`suggest` (validated here).
            context: Task facts and optional calibration batches.
            record: A record returned earlier for the same model architecture and params; when
                given, the result is replayed without data.
            structure_only: Only the layer shapes matter (weights will be loaded from a state
                dict, or only the cost is wanted): skip expensive weight computations.
        """

    def apply(self, model: nn.Module, params: Params, context: Context) -> nn.Module:
        """Return a new compressed model (the protocol's short form of :meth:`transform`)."""
        return self.transform(model, params, context).model

    def scale(self, params: Params, factor: float) -> Params:
        """Return params with the compression strength multiplied by ``factor`` (clipped).

        ``factor == 1`` returns equal params; larger is stronger, ``0`` is no compression.
        The default is for methods without such a knob: params are returned unchanged.
        """
        if factor < 0:
            raise SpaceError(f"{self.name}: scale factor must be >= 0, got {factor!r}")
        return copy.deepcopy(params)

    def reference_params(self, model: nn.Module, context: Context) -> Params | None:
        """A sensible starting point to enqueue in a study (e.g. VBMF ranks), or None."""
        return None

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        """Trial values for which :meth:`suggest` returns ``params`` (inverse of suggest)."""
        raise NotImplementedError(f"{self.name} does not map params back to trial values")

    def training_hooks(self, model: nn.Module, params: Params, context: Context) -> TrainingHooks:
        """The hooks of the training before :meth:`transform` (``pretransform_share > 0``), for ``model``,
        the model being trained. The default does nothing."""
        return TrainingHooks()

    def finetune_loss(self, params: Params, teacher: nn.Module, *, label_smoothing: float = 0.0
                      ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The fine-tuning loss ``(logits, y, x) -> loss`` this step asks for, or None (plain CE).

        Only spaces with ``distill = True`` return one (from ``teacher``, the uncompressed model).
        """
        return None

    # -- helpers for subclasses -------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """Trial parameter name for this space: ``"<space>/<part>/<part>"``."""
        return "/".join((self.name, *parts))

    def fail(self, message: str) -> SpaceError:
        """A SpaceError whose message starts with this space's name."""
        return SpaceError(f"{self.name}: {message}")
