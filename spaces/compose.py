"""Plans of several steps (e.g. prune then quantise): apply them, and rebuild from them.

``compress`` is the one compress path - trials, the final stage, fine-tuning, benchmarks and
rebuilding all go through it: it applies the steps of a plan to a trained model and returns the
plan with every step's record filled in. ``build_from_plan`` rebuilds the same model anywhere
from ``create_model(base) -> structural replay of the steps -> load state dict``, with no data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from spaces.base import Context, Plan, Space, Step
from spaces.errors import SpaceError
from spaces.registry import get_space

def space_of(step: Step) -> Space:
    """The space instance a step was searched with (its options included)."""
    return get_space(step.space, **step.options)


def check_plan(plan: Plan) -> None:
    """Structural checks that need no model: known spaces, post-training steps (int8) last."""
    for i, step in enumerate(plan.steps):
        space = space_of(step)  # unknown names and options raise, listing the known ones
        if space.post_training and any(not space_of(s).post_training for s in plan.steps[i + 1:]):
            raise SpaceError(f"plan step {i} ({step.space}) must be the last step; "
                             f"step {i + 1} is {plan.steps[i + 1].space!r}")


def split_plan(plan: Plan) -> tuple[Plan, Plan]:
    """``(steps before fine-tuning, post-training steps)`` of ``plan``, each a plan on its base."""
    post = [space_of(s).post_training for s in plan.steps]
    return (Plan(base=plan.base, steps=tuple(s for s, p in zip(plan.steps, post) if not p)),
            Plan(base=plan.base, steps=tuple(s for s, p in zip(plan.steps, post) if p)))


def to_cpu(model: nn.Module, context: Context, *, copy_model: bool) -> tuple[nn.Module, Context]:
    """``model`` and ``context`` on the CPU; ``copy_model``: never move the caller's model in place."""
    import copy
    import dataclasses
    import itertools

    if any(t.device.type != "cpu" for t in itertools.chain(model.parameters(), model.buffers())):
        model = (copy.deepcopy(model) if copy_model else model).cpu()
    if str(context.device) != "cpu":
        calib = [(x.cpu(), y.cpu()) for x, y in context.calibration] if context.calibration else context.calibration
        context = dataclasses.replace(context, device="cpu", calibration=calib)
    return model, context


def create_base(plan: Plan) -> nn.Module:
    """The uncompressed architecture named by ``plan.base`` (random weights)."""
    from rsc.models import create_model

    b = plan.base
    return create_model(str(b["model"]), int(b["num_classes"]), image_size=int(b["image_size"]))


def _context(plan: Plan, context: Context | None) -> Context:
    ctx = context or plan.context()
    if ctx.num_classes != int(plan.base["num_classes"]) or ctx.image_size != int(plan.base["image_size"]):
        raise SpaceError(f"context (num_classes={ctx.num_classes}, image_size={ctx.image_size}) does not "
                         f"match the plan base {plan.base}")
    return ctx


def compress(model: nn.Module, plan: Plan, context: Context | None = None, *,
             structure_only: bool = False) -> tuple[nn.Module, Plan]:
    """Apply every step of ``plan`` to ``model`` (not mutated).

    Steps that carry a record are replayed without data; the others are computed (using the
    context's calibration batches where a choice needs them) and their records filled in.
    Post-training steps (int8) run on a CPU copy of the model and context, where their kernels are.

    Returns:
        The compressed model and the plan with all records.
    """
    check_plan(plan)
    ctx = _context(plan, context)
    current = model
    steps: list[Step] = []
    for i, step in enumerate(plan.steps):
        space = space_of(step)
        if space.post_training:
            current, ctx = to_cpu(current, ctx, copy_model=current is model)
        try:
            done = space.transform(current, step.params, ctx, record=step.record, structure_only=structure_only)
        except SpaceError as exc:
            raise SpaceError(f"plan step {i}: {exc}") from exc
        steps.append(Step(space=step.space, params=step.params, record=done.record, options=step.options))
        current = done.model
    if current is model:
        import copy

        current = copy.deepcopy(model)
    return current, Plan(base=plan.base, steps=tuple(steps))


def apply_plan(model: nn.Module, plan: Plan, context: Context | None = None, *,
               structure_only: bool = False) -> nn.Module:
    """The compressed model of :func:`compress`, without the updated plan."""
    return compress(model, plan, context, structure_only=structure_only)[0]


def load_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, where: str = "model") -> None:
    """``load_state_dict(strict=True)`` with a SpaceError that says what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: plan {tuple(own[k].shape)} vs weights {tuple(v.shape)}" for k, v in state_dict.items()
              if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor)
              and tuple(own[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}{' ...' if len(shapes) > 3 else ''}")
        raise SpaceError(f"the weights do not match the {where} the plan builds: {'; '.join(parts)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:  # noqa: BLE001 - packed quantised params fail in their own ways
        raise SpaceError(f"the weights do not load into the {where} the plan builds: {exc}") from exc


def build_from_plan(plan: Plan, state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild a compressed model: ``create_model(base)``, replay the steps, load ``state_dict``.

    No data is needed: data-dependent choices come from the steps' records, weights (and int8
    scales) from the state dict. Without a state dict the model has the right structure and
    replayed-from-random weights.
    """
    check_plan(plan)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = create_base(plan)
    model = apply_plan(base, plan, plan.context(), structure_only=True)
    if state_dict is not None:
        load_state(model, state_dict, where="model")
    return model.eval()
