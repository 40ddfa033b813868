"""Knowledge distillation (Hinton et al. 2015): a student architecture and the KD loss as choices.

``transform`` turns the teacher into a *student*: either the teacher's own architecture thinned
(``family="self"``: every channel group keeps ``width`` of its channels, chosen by L1 magnitude,
and the student starts from the teacher's surviving weights) or another torchvision family at a
width/depth multiplier (random init). The KD loss settings (temperature, alpha) are part of the
params; :func:`kd_loss` builds the loss that :func:`spaces.finetune.finetune` hands to
``rsc.loop.fit``. The teacher is always the uncompressed model.

Width uses a family's own multiplier where torchvision has one (MobileNet V2/V3, EfficientNet-B0)
and uniform L1 channel thinning otherwise; depth scales the blocks per stage of ResNet,
MobileNet V2 and EfficientNet-B0 (other families accept only depth 1).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spaces.checks import check_fraction, check_no_extra
from spaces.base import Context, Params, Preset, Record, Space, Transformed
from spaces.errors import SpaceError
from spaces.registry import register_space

FAMILIES = ("self", "resnet18", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
            "efficientnet_b0", "squeezenet1_1")
_NATIVE_WIDTH = {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"}
_DEPTH = {"resnet18", "mobilenet_v2", "efficientnet_b0"}
TEMPERATURE, ALPHA = 4.0, 0.7  # KD settings of a step that does not give its own


def kd_loss(teacher: nn.Module, *, temperature: float, alpha: float, label_smoothing: float = 0.0
            ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Hinton's loss ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE(student, y)``.

    Returns a ``loss_fn(logits, y, x)`` for ``rsc.loop.fit``; the teacher runs on ``x`` in eval
    mode without gradients. ``T^2`` keeps the soft-target gradients on the CE scale.
    ``label_smoothing`` applies to the hard-label CE term (the search uses ``fit``'s 0.1).
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise _err(f"temperature must be > 0, got {temperature!r}")
    check_fraction("distill.kd", "alpha", alpha, high_open=False)
    teacher.eval()  # its parameters are left as they are: the teacher is the caller's model
    t = float(temperature)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.softmax(teacher(x) / t, dim=1)
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * (t * t)
        return alpha * kl + (1.0 - alpha) * F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    return loss_fn


def _err(msg: str) -> SpaceError:
    return SpaceError(f"distill.kd: {msg}")


def _blocks(n: int, depth: float) -> int:
    return max(1, int(math.ceil(n * depth)))


def build_family(family: str, *, num_classes: int, image_size: int, width: float, depth: float) -> nn.Module:
    """A randomly initialised student of a torchvision family at a native width/depth multiplier.

    Width is applied natively only for families in ``_NATIVE_WIDTH``; callers thin the others.
    """
    import torchvision.models as tvm
    from rsc.models import adapt_to_input

    if family == "resnet18":
        model: nn.Module = tvm.ResNet(tvm.resnet.BasicBlock, [_blocks(2, depth)] * 4, num_classes=num_classes)
    elif family == "mobilenet_v2":
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                   [6, 160, 3, 2], [6, 320, 1, 1]]
        setting = [[t, c, _blocks(n, depth), s] for t, c, n, s in setting]
        model = tvm.MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting)
    elif family in ("mobilenet_v3_small", "mobilenet_v3_large"):
        from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

        setting, last = _mobilenet_v3_conf(family, width_mult=width)
        model = tvm.MobileNetV3(setting, last, num_classes=num_classes)
    elif family == "efficientnet_b0":
        from torchvision.models.efficientnet import _efficientnet_conf

        setting, last = _efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
        model = tvm.EfficientNet(setting, 0.2, last_channel=last, num_classes=num_classes)
    else:
        from rsc.models import create_model

        model = create_model(family, num_classes)
    adapt_to_input(model, image_size, name=family)
    return model


@register_space("distill.kd")
class Distillation(Space):
    """Student architecture + KD loss settings.

    Params: ``{"student": {"family": "self", "width": 0.5, "depth": 1.0},
    "temperature": 4.0, "alpha": 0.7}``.

    Args:
        families: Student families the search may pick (``"self"`` = the teacher thinned).
        min_width: Lower end of the sampled width multiplier and floor of :meth:`scale`.
        width_step: Sampling grid of the width.
        depths: Depth multipliers the search may pick (families without depth get 1.0).
        temperatures: Range ``(low, high)`` of the sampled temperature.
        alphas: Range ``(low, high)`` of the sampled soft-loss weight.
    """

    aliases = ("distill",)
    distill = True
    presets = (Preset(name="distill-self", family="global",
                      what="KD into the network thinned to the rate (L1-chosen channels)",
                      start=lambda space, model, context: {"student": {"family": "self", "width": 0.95, "depth": 1.0},
                                                           "temperature": TEMPERATURE, "alpha": ALPHA}),)

    def __init__(self, *, families: Sequence[str] = ("self", "mobilenet_v2", "resnet18"),
                 min_width: float = 0.25, width_step: float = 0.125, depths: Sequence[float] = (0.5, 1.0),
                 temperatures: tuple[float, float] = (1.0, 8.0), alphas: tuple[float, float] = (0.1, 0.9)) -> None:
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise _err(f"unknown student families {bad or list(families)}; known: {list(FAMILIES)}")
        self.families = tuple(families)
        self.min_width = check_fraction("distill.kd", "min_width", min_width, low_open=True, high_open=False)
        self.width_step = check_fraction("distill.kd", "width_step", width_step, low_open=True)
        self.depths = tuple(float(d) for d in depths)
        self.temperatures = (float(temperatures[0]), float(temperatures[1]))
        self.alphas = (float(alphas[0]), float(alphas[1]))

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        family = (trial.suggest_categorical(self.key("family"), list(self.families))
                  if len(self.families) > 1 else self.families[0])
        width = trial.suggest_float(self.key("width"), self.min_width, 1.0, step=self.width_step)
        depth = (trial.suggest_categorical(self.key("depth"), list(self.depths))
                 if len(self.depths) > 1 else self.depths[0])
        if family not in _DEPTH:
            depth = 1.0
        return {"student": {"family": family, "width": width, "depth": depth},
                "temperature": trial.suggest_float(self.key("temperature"), *self.temperatures, step=0.5),
                "alpha": trial.suggest_float(self.key("alpha"), *self.alphas, step=0.1)}

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        s = self.validate(params)
        out: dict[str, Any] = {self.key("width"): s["width"], self.key("temperature"): params["temperature"],
                               self.key("alpha"): params["alpha"]}
        if len(self.families) > 1:
            out[self.key("family")] = s["family"]
        if len(self.depths) > 1:
            out[self.key("depth")] = s["depth"] if s["family"] in _DEPTH else self.depths[-1]
        return out

    def validate(self, params: Params) -> dict[str, Any]:
        check_no_extra(self.name, params, ["student", "temperature", "alpha"])
        student = params.get("student")
        if not isinstance(student, dict):
            raise _err(f"params need a 'student' object, got {student!r:.200}")
        check_no_extra(self.name, student, ["family", "width", "depth"])
        family = student.get("family", "self")
        if family not in FAMILIES:
            raise _err(f"unknown student family {family!r}; known: {list(FAMILIES)}")
        width = check_fraction(self.name, "student width", student.get("width", 1.0), low_open=True,
                               high_open=False)
        depth = student.get("depth", 1.0)
        if not isinstance(depth, (int, float)) or not 0 < depth <= 1:
            raise _err(f"student depth must be in (0, 1], got {depth!r}")
        if family not in _DEPTH and depth != 1.0:
            raise _err(f"family {family!r} has no depth multiplier (depth must be 1.0, got {depth!r})")
        t = params.get("temperature", TEMPERATURE)
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not (t > 0 and math.isfinite(t)):
            raise _err(f"temperature must be > 0, got {t!r}")
        check_fraction(self.name, "alpha", params.get("alpha", ALPHA), high_open=False)
        return {"family": family, "width": width, "depth": float(depth)}

    def finetune_loss(self, params: Params, teacher: nn.Module, *, label_smoothing: float = 0.0
                      ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """Hinton KD from ``teacher`` with this step's temperature and alpha (see :func:`kd_loss`)."""
        return kd_loss(teacher, temperature=float(params.get("temperature", TEMPERATURE)),
                       alpha=float(params.get("alpha", ALPHA)), label_smoothing=label_smoothing)

    def scale(self, params: Params, factor: float) -> Params:
        super().scale(params, factor)
        out = copy.deepcopy(params)
        if factor == 1:
            return out
        w = params["student"]["width"]
        g = 1.0 - (1.0 - w) * factor
        out["student"]["width"] = round(max(g, min(w, self.min_width)) if factor > 1 else min(1.0, g), 6)
        return out

    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        s = self.validate(params)
        family, width, depth = s["family"], s["width"], s["depth"]
        if family == "self":
            base = model
        else:
            with torch.random.fork_rng():
                torch.manual_seed(context.seed)
                native_w = width if family in _NATIVE_WIDTH else 1.0
                base = build_family(family, num_classes=context.num_classes, image_size=context.image_size,
                                    width=native_w, depth=depth)
            base = base.to(next(model.parameters()).device)
            if family in _NATIVE_WIDTH:
                return Transformed(base, None)
        if width >= 1.0:
            return Transformed(copy.deepcopy(base) if base is model else base, None)
        from spaces.prune import ChannelPruning, prunable_groups

        pruner = ChannelPruning(criteria=("l1",))
        ratios = {g.name: 1.0 - width for g in prunable_groups(base, context)}
        done = pruner.transform(base, {"criterion": "l1", "round_to": 8, "ratios": ratios}, context,
                                record=record, structure_only=structure_only)
        return Transformed(done.model, done.record)
