"""Short fine-tuning after compression, and BN recalibration for zero-epoch evaluation.

Compression moves the activations every later layer sees; two cheap remedies:

* :func:`recalibrate_bn` re-estimates BatchNorm running statistics on a few training batches,
  without any gradient step. It is what makes a pruned or decomposed model's accuracy meaningful
  at zero fine-tuning epochs (the search's cheapest fidelity).
* :func:`zero_epoch_oa` scores a compressed model so, on a copy: EagleEye's adaptive-BN
  accuracy (Li et al. 2020), a candidate's rank before any fine-tuning.
* :func:`finetune` runs a short ``rsc.loop.fit`` schedule, optionally distilling from the
  uncompressed model (``loss_fn``), keeps magnitude-pruned zeros at zero (the zero pattern is
  applied as a fixed mask during training and made permanent again afterwards) and, given
  ``bn_batches``, re-estimates BatchNorm statistics after every epoch, before it is validated.

:func:`finetune_plan` is the one way a plan becomes a trained compressed model - the search's
trials and final stage, the study and the benchmarks all take it: compress the steps that come
before fine-tuning, fine-tune (with the loss a distillation step asks for), then apply the
post-training steps (int8) with calibration batches. A step whose space trains the model before
its transform (``Space.pretransform_share``: soft filter pruning, Network Slimming) splits the
fine-tune in two: that share of the epochs under the space's hooks, the transform, the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rsc.loop import recalibrate_bn
from spaces.base import Context, Plan, TrainingHooks
from spaces.errors import SpaceError


def _sparse_layers(model: nn.Module, min_sparsity: float) -> list[nn.Module]:
    out = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(w, torch.Tensor) and w.numel():
            sparsity = float((w == 0).float().mean())
            if sparsity > 0 and sparsity >= min_sparsity:
                out.append(m)
    return out


def finetune(model: nn.Module, train_loader: Any, *, epochs: int, lr: float = 0.01,
             teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.7,
             val_loader: Any = None, num_classes: int | None = None, device: str | torch.device = "cpu",
             seed: int = 0, keep_sparsity: bool = True, min_sparsity: float = 0.05,
             progress: bool = False, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
             | None = None, on_epoch: Callable[[dict], None] | None = None,
             bn_batches: Sequence[Any] | None = None, hooks: TrainingHooks | None = None) -> list[dict]:
    """Fine-tune a compressed model in place with ``rsc.loop.fit``.

    Args:
        model: The compressed model (not quantised: fine-tune before ``quant.int8``).
        train_loader: Batches ``(x, y)`` (see ``rsc.loaders.make_loaders``).
        epochs: Passes over the data; 0 returns at once.
        lr: Peak learning rate; lower than from-scratch training since the weights are trained.
        teacher: The uncompressed model; when given, Hinton KD with ``temperature``/``alpha``.
        keep_sparsity: Keep exact zeros of layers at least ``min_sparsity`` sparse at zero
            (``min_sparsity=0``: of every layer holding a zero).
        loss_fn: A ready ``(logits, y, x) -> loss`` instead of the one ``teacher`` implies.
        on_epoch: Passed to ``fit`` (per-epoch records; a search raises there to stop early).
        bn_batches: Batches (best unaugmented) on which BatchNorm statistics are re-estimated at
            the end of every epoch, before it is validated, so each epoch's OA (and the model
            returned) uses statistics of its final weights. The running averages otherwise lag
            behind weights that a short fine-tune is still moving: on UC Merced at 64 px, a
            ResNet-18 pruned to 1/4 of its params read 0.49 validation OA after one epoch and
            0.67 once re-estimated on 4 batches; at 1/16, 0.16 and 0.42.
        hooks: A space's hooks for the training before its transform (:class:`spaces.base.TrainingHooks`):
            ``start`` before the first epoch, ``after_backward`` at every step, ``end_of_epoch`` before
            the BatchNorm re-estimation.

    Returns:
        ``fit``'s per-epoch history.
    """
    from rsc.loop import fit

    from spaces.quant import is_quantized

    if is_quantized(model):
        raise SpaceError("finetune: the model is int8-quantised; fine-tune before the quant.int8 step")
    if teacher is not None and loss_fn is not None:
        raise SpaceError("finetune: give either a teacher or a loss_fn, not both")
    if teacher is not None:
        from spaces.distill import kd_loss

        teacher.to(device)
        loss_fn = kd_loss(teacher, temperature=temperature, alpha=alpha)
    hooks = hooks or TrainingHooks()

    def end_of_epoch(m: nn.Module) -> None:
        if hooks.end_of_epoch is not None:
            hooks.end_of_epoch(m)
        if bn_batches:
            recalibrate_bn(m, bn_batches, max_batches=len(bn_batches), device=device)

    masked: list[nn.Module] = []
    if keep_sparsity and epochs > 0:
        import torch.nn.utils.prune as tprune

        for m in _sparse_layers(model, min_sparsity):
            tprune.custom_from_mask(m, "weight", (m.weight.detach() != 0).to(m.weight.dtype))
            masked.append(m)
    if hooks.start is not None and epochs > 0:  # after the masks: zeros the hooks make are free to grow back
        hooks.start(model)
    try:
        return fit(model, train_loader, epochs=epochs, lr=lr, val_loader=val_loader, num_classes=num_classes,
                   loss_fn=loss_fn, device=device, seed=seed, progress=progress, desc="finetune",
                   on_epoch=on_epoch, after_backward=hooks.after_backward,
                   end_of_epoch=end_of_epoch if bn_batches or hooks.end_of_epoch else None)
    finally:
        if masked:
            import torch.nn.utils.prune as tprune

            for m in masked:
                tprune.remove(m, "weight")


@torch.no_grad()
def zero_epoch_oa(model: nn.Module, bn_batches: Sequence[Any], val_loader: Any, *, num_classes: int,
                  device: str | torch.device = "cpu") -> float:
    """Validation OA of ``model`` with its BatchNorm statistics re-estimated on ``bn_batches`` and no
    gradient step: EagleEye's adaptive-BN evaluation (Li et al. 2020). Scored on a copy, so the
    caller's model - and the fine-tune that follows - is exactly as it was."""
    import copy

    from rsc.metrics import evaluate

    scored = copy.deepcopy(model)
    if bn_batches:
        recalibrate_bn(scored, bn_batches, max_batches=len(bn_batches), device=device)
    return float(evaluate(scored.eval(), val_loader, num_classes=num_classes, device=device).oa)


class StopFinetune(Exception):
    """Raised by an ``on_epoch`` hook to end a fine-tune early (a search stops dominated trials so).

    :func:`finetune_plan` lets it through with ``plan`` set: the plan compressed so far, records included.
    """

    plan: Plan | None = None


def finetune_plan(base_model: nn.Module, plan: Plan, train_loader: Any, *, epochs: int,
                  lr: float = 0.01, context: Context | None = None, distill: bool | None = None,
                  bn_batches: int | Sequence[Any] = 20, recalibrate_first: bool = True,
                  val_loader: Any = None, on_epoch: Callable[[dict], None] | None = None,
                  on_compressed: Callable[[nn.Module], None] | None = None, label_smoothing: float = 0.0, device: str | torch.device = "cpu", seed: int = 0,
                  progress: bool = False) -> tuple[nn.Module, Plan, list[dict]]:
    """Compress ``base_model`` by ``plan``, fine-tune, then apply the post-training steps (int8).

    A step whose space trains the model before its transform (``pretransform_share > 0``) and every
    step after it wait: the model compressed by the steps before it trains ``floor(epochs * share)``
    epochs under that space's :class:`TrainingHooks` (zeros free to grow back), then those steps
    transform it and the rest of the epochs fine-tune it (soft filter pruning: all epochs soft-pruned,
    the filters removed at the end; Network Slimming: half sparsity-regularised, pruned by BN scale,
    half fine-tuned). The history counts the epochs of both parts as one fine-tune.

    Args:
        base_model: The trained uncompressed model (also the KD teacher); not mutated.
        plan: Steps to apply (records, if present, are replayed).
        train_loader: Training batches; the source of BN (and int8) calibration batches when
            ``bn_batches`` is a count.
        epochs: Fine-tuning epochs (0: none).
        context: Task facts; its calibration batches (if any) serve data-dependent choices and
            the post-training steps, else the BN batches do.
        distill: KD from the base model; ``None`` = as the plan's distillation step says (a step
            whose space has ``distill = True``), True = also without one (that space's defaults).
        bn_batches: Batches (best unaugmented) on which BatchNorm statistics are re-estimated after
            every epoch, or how many to take from ``train_loader``.
        recalibrate_first: Also re-estimate them once before fine-tuning.
        val_loader, on_epoch: Passed to ``fit``; an ``on_epoch`` that raises :class:`StopFinetune`
            ends the fine-tune (the exception carries the plan compressed so far).
        on_compressed: Called with the compressed model before it is fine-tuned (after the training
            before a transform, where a step has one); it may raise :class:`StopFinetune` too (the plan
            compressed is set on it as for ``on_epoch``; stopped before a transform: the plan unrecorded
            from that step on).
        label_smoothing: Of the KD loss's hard-label term (``fit``'s own CE uses 0.1).

    Returns:
        The compressed (fine-tuned, maybe quantised) model, the plan with records, the history.
    """
    from spaces.compose import compress, space_of, split_plan

    pre, post = split_plan(plan)
    ctx = context or plan.context()
    # the steps from the first one trained before its transform (SFP, slimming) wait for that training
    trained = [space_of(s).pretransform_share > 0 for s in pre.steps]
    cut = trained.index(True) if any(trained) else len(pre.steps)
    head, rest = (Plan(base=plan.base, steps=pre.steps[:cut]), Plan(base=plan.base, steps=pre.steps[cut:]))
    before = math.floor(epochs * max(space_of(s).pretransform_share for s in rest.steps)) if rest.steps else 0
    model, pre_done = compress(base_model, head, ctx)
    model.to(device)
    if not rest.steps:
        _compressed(on_compressed, model, pre_done)
    if isinstance(bn_batches, int):
        batches = [(b[0].detach().cpu(), b[1].detach().cpu()) for _, b in zip(range(bn_batches), train_loader)]
    else:
        batches = list(bn_batches)
    if recalibrate_first:
        recalibrate_bn(model, batches, max_batches=len(batches), device=device)
    history: list[dict] = []
    loss_fn = _loss(base_model, pre, distill, device, label_smoothing) if epochs > 0 else None
    train = dict(lr=lr, loss_fn=loss_fn, val_loader=val_loader, num_classes=ctx.num_classes, device=device, seed=seed,
                 progress=progress, bn_batches=batches)
    if rest.steps:
        if before > 0:
            hooks = [space_of(s).training_hooks(model, s.params, ctx) for s in rest.steps]
            try:  # the zeros of the steps before are kept, those the hooks make may grow back
                history = finetune(model, train_loader, epochs=before, min_sparsity=0.0, on_epoch=on_epoch,
                                   keep_sparsity=any(space_of(s).keeps_sparsity for s in head.steps),
                                   hooks=_chained(hooks), **train)
            except StopFinetune as stop:
                stop.plan = Plan(base=plan.base, steps=(*pre_done.steps, *rest.steps))
                raise
        model, rest_done = compress(model, rest, ctx)
        model.to(device)
        pre_done = Plan(base=plan.base, steps=(*pre_done.steps, *rest_done.steps))
        _compressed(on_compressed, model, pre_done)
        if recalibrate_first:
            recalibrate_bn(model, batches, max_batches=len(batches), device=device)
    if epochs - before > 0:
        def shifted(record: dict) -> None:  # the epochs of the two parts counted as one fine-tune
            record["epoch"] += before
            if on_epoch is not None:
                on_epoch(record)

        try:
            history += finetune(model, train_loader, epochs=epochs - before, min_sparsity=0.0,
                                keep_sparsity=any(space_of(s).keeps_sparsity for s in pre.steps),
                                on_epoch=shifted if before else on_epoch, **train)
        except StopFinetune as stop:
            stop.plan = pre_done
            raise
    if not post.steps:
        return model.eval(), pre_done, history
    import dataclasses

    qctx = ctx if ctx.calibration else dataclasses.replace(ctx, calibration=batches)
    model, post_done = compress(model.cpu(), post, qctx)  # post-training kernels run on the CPU
    return model.eval(), Plan(base=plan.base, steps=(*pre_done.steps, *post_done.steps)), history


def _compressed(on_compressed: Callable[[nn.Module], None] | None, model: nn.Module, done: Plan) -> None:
    if on_compressed is not None:
        try:
            on_compressed(model)
        except StopFinetune as stop:  # stopped before any fine-tuning of the compressed model (a zero-epoch screen)
            stop.plan = done
            raise


def _chained(hooks: Sequence[TrainingHooks]) -> TrainingHooks:
    """One :class:`TrainingHooks` calling each of ``hooks`` in turn."""
    def each(kind: str) -> Callable[[nn.Module], None] | None:
        fns = [getattr(h, kind) for h in hooks if getattr(h, kind) is not None]
        if not fns:
            return None
        if len(fns) == 1:
            return fns[0]

        def each_in_turn(m: nn.Module) -> None:
            for fn in fns:
                fn(m)

        return each_in_turn

    return TrainingHooks(start=each("start"), after_backward=each("after_backward"), end_of_epoch=each("end_of_epoch"))


def _loss(base_model: nn.Module, pre: Plan, distill: bool | None, device: str | torch.device,
          label_smoothing: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The fine-tune's loss: a distillation step's, or the default KD with ``distill``, else None (plain CE)."""
    from spaces.compose import space_of

    kd = [s for s in pre.steps if space_of(s).distill]
    if not (kd or distill):
        return None
    teacher = base_model
    want = torch.device(device)
    if any(t.device.type != want.type or want.index not in (None, t.device.index) for t in teacher.parameters()):
        import copy

        teacher = copy.deepcopy(base_model).to(device)  # never move the caller's model
    if kd and distill is not False:
        return space_of(kd[-1]).finetune_loss(kd[-1].params, teacher, label_smoothing=label_smoothing)
    if distill:
        from spaces.distill import ALPHA, TEMPERATURE, kd_loss

        return kd_loss(teacher, temperature=TEMPERATURE, alpha=ALPHA, label_smoothing=label_smoothing)
    return None
