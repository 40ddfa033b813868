"""Low-rank decomposition: Tucker-2 for convolutions (Kim et al. 2016), truncated SVD for FC layers.

A ``kxk`` convolution ``W[C_out, C_in, k, k]`` is factorised along its two channel modes with
tensorly's partial Tucker, ``W ~ core x_0 U_out x_1 U_in``, and replaced by three convolutions:
``1x1 (C_in -> R_in, U_in^T)`` -> ``kxk (R_in -> R_out, core; the original stride, padding,
dilation)`` -> ``1x1 (R_out -> C_out, U_out, the original bias)``. Only ``groups=1`` convs are
eligible (depthwise convs are already cheap). A linear layer ``W[out, in]`` becomes
``Linear(in -> R) -> Linear(R -> out)`` from its truncated SVD; most of AlexNet's and VGG's
parameters sit there.

A mode kept at full rank (``f = 1``) gets no projection at all when the params say
``"tucker1": true`` (what :meth:`TuckerDecomposition.suggest` writes): ``kxk (C_in -> R_out)`` ->
``1x1 (R_out -> C_out)``, or ``1x1 (C_in -> R_in)`` -> ``kxk (R_in -> C_out)`` - Tucker-1, one
convolution fewer than a full-rank identity-like 1x1 (measured 1.1-1.4x better speed-up per MAC cut
than Tucker-2 on ResNet-18's layers at 64 px). Plans without the key keep three convolutions.

Ranks are searched as fractions of the channel counts (``R = max(1, round(f * C))``). The
reference point is EVBMF (see :mod:`spaces.vbmf`) applied to the mode-0 and mode-1 unfoldings, as
Kim et al. do. A layer whose factorised form would not have fewer MACs than the original is
left as it is (deterministic given the params, so plans replay exactly).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import nn

from spaces.checks import check_bins, check_fraction, check_keys, check_mapping, check_no_extra, is_positive_int
from spaces.layers import bin_values, depth_bins, expand_bins, find_head, round_channels, set_module
from spaces.base import Context, Params, Preset, Record, Space, Transformed
from spaces.errors import SpaceError
from spaces.registry import register_space


def rank_of(fraction: float, channels: int, round_to: int = 1) -> int:
    """The rank ``transform`` builds: ``round(fraction * channels)``, then to the nearest multiple of
    ``round_to`` (at least one multiple, never above ``channels``; conv kernels run multiples of 8 far faster)."""
    return round_channels(int(round(fraction * channels)), channels, round_to)


def _ksize(conv: nn.Conv2d) -> int:
    return int(conv.kernel_size[0]) * int(conv.kernel_size[1])


def decomposed_form(conv: nn.Conv2d, r_out: int, r_in: int, tucker1: bool) -> str:
    """The form ``transform`` builds: ``"tucker2"`` (three convs), ``"out"`` / ``"in"`` (Tucker-1 on that mode)."""
    if tucker1 and r_in == conv.in_channels:
        return "out"
    if tucker1 and r_out == conv.out_channels:
        return "in"
    return "tucker2"


def tucker_worthwhile(conv: nn.Conv2d, r_out: int, r_in: int, tucker1: bool = False) -> bool:
    """Whether the factorised form has fewer weights (hence MACs per output pixel) than the original."""
    c_out, c_in, k = conv.out_channels, conv.in_channels, _ksize(conv)
    form = decomposed_form(conv, r_out, r_in, tucker1)
    if form == "out":
        weights = c_in * r_out * k + r_out * c_out
    elif form == "in":
        weights = c_in * r_in + r_in * c_out * k
    else:
        weights = c_in * r_in + r_in * r_out * k + r_out * c_out
    return weights < c_out * c_in * k


def svd_worthwhile(fc: nn.Linear, r: int) -> bool:
    return r * (fc.in_features + fc.out_features) < fc.in_features * fc.out_features


@register_space("decompose.tucker")
class TuckerDecomposition(Space):
    """Per-layer Tucker-2 ranks for convolutions and SVD ranks for linear layers.

    Params: ``{"conv": {name: [f_out, f_in]}, "fc": {name: f}, "round_to": 8, "tucker1": true}``,
    fractions in (0, 1] of the layer's output/input channels (features); ranks are rounded to
    multiples of ``round_to`` (absent: 1, as plans written before the option); with ``tucker1`` a
    full-rank mode is not projected (module docstring). Layers not named are not decomposed.

    Args:
        min_fraction: Lower end of the sampled fractions and the floor of :meth:`scale`.
        max_fraction: Upper end of the sampled fractions.
        step: Sampling grid of the fractions.
        min_channels: Layers with fewer input or output channels are not eligible (the stem).
        decompose_fc: Also offer hidden linear layers (never the classifier head).
        n_iter_max: HOOI sweeps of tensorly's partial Tucker after the HOSVD start (each sweep
            costs about two SVDs of the layer's projected unfoldings; 2 gets most of the gain).
        round_to: Rank multiple written into suggested params (1 = exact ranks).
        bins: One ``[f_out, f_in]`` pair per contiguous depth bin of the eligible convolutions
            instead of one per convolution (ResNet-18: 4 bins = its stages); linear layers keep
            one fraction each. A smaller space for short searches; bin fractions are sampled up to
            one ``step`` below ``max_fraction``, so that scaling can move every stage.
    """

    aliases = ("tucker",)
    binnable = True
    presets = (
        Preset(name="tucker-vbmf", family="local", what="Tucker-2 on every convolution at EVBMF ranks (Kim et al.)",
               start=lambda space, model, context: space.reference_params(model, context), fixed_rate=True),
        Preset(name="tucker", family="local",
               what="Tucker-2 on every convolution, uniform ranks projected onto the rate", uniform=True,
               start=lambda space, model, context: space.uniform_params(model, context)),
        # 5% of every EVBMF cut, then one factor onto the rate
        Preset(name="tucker-vbmf-scaled", family="local", variant=True,
               what="Tucker-2 at EVBMF's per-layer rank profile, its cuts scaled by one factor onto the rate",
               start=lambda space, model, context: space.scale(space.reference_params(model, context), 0.05)),
    )

    def __init__(self, *, min_fraction: float = 0.1, max_fraction: float = 1.0, step: float = 0.05,
                 min_channels: int = 16, decompose_fc: bool = True, n_iter_max: int = 2,
                 round_to: int = 8, bins: int | None = None) -> None:
        if not is_positive_int(round_to):
            raise SpaceError(f"decompose.tucker: round_to must be a positive integer, got {round_to!r}")
        self.round_to = round_to
        self.bins = check_bins("decompose.tucker", bins)
        self.min_fraction = check_fraction("decompose.tucker", "min_fraction", min_fraction, low_open=True,
                                           high_open=False)
        self.max_fraction = check_fraction("decompose.tucker", "max_fraction", max_fraction,
                                           low=self.min_fraction, high_open=False)
        self.step = check_fraction("decompose.tucker", "step", step, low_open=True)
        self.min_channels = int(min_channels)
        self.decompose_fc = bool(decompose_fc)
        self.n_iter_max = int(n_iter_max)

    # -- eligibility ---------------------------------------------------------------------------

    def conv_layers(self, model: nn.Module, context: Context) -> list[str]:
        heads = set(find_head(model, context.num_classes))
        return [n for n, m in model.named_modules()
                if type(m) is nn.Conv2d and n not in heads and m.groups == 1 and _ksize(m) > 1
                and min(m.in_channels, m.out_channels) >= self.min_channels]

    def fc_layers(self, model: nn.Module, context: Context) -> list[str]:
        if not self.decompose_fc:
            return []
        heads = set(find_head(model, context.num_classes))
        return [n for n, m in model.named_modules()
                if type(m) is nn.Linear and n not in heads
                and min(m.in_features, m.out_features) >= self.min_channels]

    def _explain(self, model: nn.Module, name: str, context: Context) -> str:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            return "no such layer"
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                return f"grouped conv (groups={m.groups}); Tucker-2 handles groups=1 only"
            if _ksize(m) == 1:
                return "1x1 conv (nothing to decompose spatially)"
            if name in find_head(model, context.num_classes):
                return "classifier head (kept)"
            return f"fewer than min_channels={self.min_channels} channels"
        return f"{type(m).__name__} is not a Conv2d"

    # -- params --------------------------------------------------------------------------------

    def _tucker1(self, params: Params) -> bool:
        t = params.get("tucker1", False)
        if not isinstance(t, bool):
            raise self.fail(f"tucker1 must be true or false, got {t!r}")
        return t

    def _round_to(self, params: Params) -> int:
        r = params.get("round_to", 1)
        if not is_positive_int(r):
            raise self.fail(f"round_to must be a positive integer, got {r!r}")
        return r

    def validate(self, params: Params, model: nn.Module, context: Context) -> tuple[dict, dict]:
        check_no_extra(self.name, params, ["conv", "fc", "round_to", "tucker1"])
        self._round_to(params)
        self._tucker1(params)
        conv = check_mapping(self.name, "conv", params.get("conv", {}))
        fc = check_mapping(self.name, "fc", params.get("fc", {}))
        convs = self.conv_layers(model, context)
        for n in conv:
            if n not in convs:
                raise self.fail(f"cannot decompose layer {n!r}: {self._explain(model, n, context)}")
        check_keys(self.name, "fc", fc, self.fc_layers(model, context))
        out_conv: dict[str, tuple[float, float]] = {}
        for n, v in conv.items():
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise self.fail(f"ranks of layer {n!r} must be [f_out, f_in], got {v!r}")
            m = model.get_submodule(n)
            out_conv[n] = (self._fraction(n, "f_out", v[0], m.out_channels),
                           self._fraction(n, "f_in", v[1], m.in_channels))
        out_fc = {n: self._fraction(n, "f", v, min(model.get_submodule(n).in_features,
                                                   model.get_submodule(n).out_features))
                  for n, v in fc.items()}
        return out_conv, out_fc

    def _fraction(self, layer: str, what: str, value: Any, channels: int) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and value > 1:
            raise self.fail(f"rank fraction {what}={value!r} of layer {layer!r} asks for rank "
                            f"{int(round(value * channels))} above its {channels} channels")
        return check_fraction(self.name, f"rank fraction {what} of layer {layer!r}", value,
                              low_open=True, high_open=False)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        lo, hi, st = self.min_fraction, self.max_fraction, self.step
        convs = self.conv_layers(model, context)
        if self.bins:
            # up to one step below full rank: a whole stage sampled at [1, 1] is never decomposed and
            # stays so under the projection's scaling (measured: 1 of 216 benchmark trials infeasible)
            top = hi - st if hi - st >= lo else hi
            conv = expand_bins(depth_bins(model, convs, self.bins), convs, lambda i: [
                trial.suggest_float(self.key("f_out", f"bin{i}"), lo, top, step=st),
                trial.suggest_float(self.key("f_in", f"bin{i}"), lo, top, step=st)])
        else:
            conv = {n: [trial.suggest_float(self.key("f_out", n), lo, hi, step=st),
                        trial.suggest_float(self.key("f_in", n), lo, hi, step=st)] for n in convs}
        fc = {n: trial.suggest_float(self.key("f", n), lo, hi, step=st) for n in self.fc_layers(model, context)}
        return {"conv": conv, "fc": fc, "round_to": self.round_to, "tucker1": True}

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        conv, fc = self.validate(params, model, context)
        out: dict[str, Any] = {}
        if self.bins:
            layout = depth_bins(model, self.conv_layers(model, context), self.bins)
            for i, (f_out, f_in) in enumerate(bin_values(self.name, "rank pair", conv, layout, (1.0, 1.0))):
                out[self.key("f_out", f"bin{i}")] = f_out
                out[self.key("f_in", f"bin{i}")] = f_in
        else:
            for n in self.conv_layers(model, context):
                f_out, f_in = conv.get(n, (1.0, 1.0))
                out[self.key("f_out", n)] = f_out
                out[self.key("f_in", n)] = f_in
        for n in self.fc_layers(model, context):
            out[self.key("f", n)] = fc.get(n, 1.0)
        return out

    def _grid(self, f: float) -> float:
        """Round a fraction up onto the sampling grid, inside [min_fraction, max_fraction]."""
        k = math.ceil((f - self.min_fraction) / self.step - 1e-9)
        return round(min(self.max_fraction, max(self.min_fraction, self.min_fraction + k * self.step)), 6)

    def uniform_params(self, model: nn.Module, context: Context, fraction: float = 0.95) -> Params:
        """Every eligible convolution at ranks ``fraction`` of its channels, Tucker-1 where a mode stays full
        (a preset's weak start: a projection strengthens it)."""
        return {"conv": {n: [fraction, fraction] for n in self.conv_layers(model, context)}, "fc": {},
                "round_to": self.round_to, "tucker1": True}

    def reference_params(self, model: nn.Module, context: Context) -> Params:
        """EVBMF ranks of every eligible layer, as grid fractions (Kim et al.'s choice)."""
        from spaces.vbmf import evbmf_rank

        conv: dict[str, list[float]] = {}
        for n in self.conv_layers(model, context):
            w = model.get_submodule(n).weight.detach().cpu().double()
            c_out, c_in = w.shape[:2]
            r_out = evbmf_rank(w.reshape(c_out, -1).numpy())
            r_in = evbmf_rank(w.transpose(0, 1).reshape(c_in, -1).numpy())
            conv[n] = [self._grid(max(r_out, 1) / c_out), self._grid(max(r_in, 1) / c_in)]
        fc: dict[str, float] = {}
        for n in self.fc_layers(model, context):
            w = model.get_submodule(n).weight.detach().cpu().double()
            fc[n] = self._grid(max(evbmf_rank(w.numpy()), 1) / min(w.shape))
        return {"conv": conv, "fc": fc, "round_to": self.round_to, "tucker1": True}

    def scale(self, params: Params, factor: float) -> Params:
        super().scale(params, factor)
        if factor == 1:
            return copy.deepcopy(params)

        def s(f: float) -> float:
            g = 1.0 - (1.0 - f) * factor
            return round(max(g, min(f, self.min_fraction)) if factor > 1 else min(1.0, g), 6)

        out = {"conv": {n: [s(v[0]), s(v[1])] for n, v in params.get("conv", {}).items()},
               "fc": {n: s(v) for n, v in params.get("fc", {}).items()}}
        for key in ("round_to", "tucker1"):
            if key in params:
                out[key] = params[key]
        return out

    # -- building ------------------------------------------------------------------------------

    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        conv, fc = self.validate(params, model, context)
        round_to, tucker1 = self._round_to(params), self._tucker1(params)
        new = copy.deepcopy(model)
        ranks: dict[str, Any] = {}
        for n, (f_out, f_in) in conv.items():
            m = new.get_submodule(n)
            r_out, r_in = rank_of(f_out, m.out_channels, round_to), rank_of(f_in, m.in_channels, round_to)
            if not tucker_worthwhile(m, r_out, r_in, tucker1):
                continue
            if m.padding_mode != "zeros":
                raise self.fail(f"layer {n!r}: padding_mode {m.padding_mode!r} is not supported")
            form = decomposed_form(m, r_out, r_in, tucker1)
            seq = (self._tucker(m, r_out, r_in, n, structure_only) if form == "tucker2"
                   else _tucker1(m, r_out if form == "out" else r_in, form, structure_only))
            set_module(new, n, seq)
            ranks[n] = [r_out, r_in]
        for n, f in fc.items():
            m = new.get_submodule(n)
            r = rank_of(f, min(m.in_features, m.out_features), round_to)
            if not svd_worthwhile(m, r):
                continue
            set_module(new, n, _svd_linear(m, r, structure_only))
            ranks[n] = [r]
        return Transformed(new, {"ranks": ranks})

    def _tucker(self, conv: nn.Conv2d, r_out: int, r_in: int, name: str, structure_only: bool) -> nn.Sequential:
        dev, dtype = conv.weight.device, conv.weight.dtype
        first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        core = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                         dilation=conv.dilation, bias=False)
        last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
        seq = nn.Sequential(first, core, last).to(device=dev, dtype=dtype)
        if structure_only:
            return seq
        import tensorly as tl
        from tensorly.decomposition import partial_tucker

        w = conv.weight.detach().float()
        try:
            # HOSVD start from the Gram matrices' eigenvectors (C x C): tensorly's own "svd" init
            # takes full SVDs of the C x (C*k*k) unfoldings, ~10x slower on 512-channel layers.
            u0 = _leading(w.reshape(w.shape[0], -1), r_out)
            v0 = _leading(w.transpose(0, 1).reshape(w.shape[1], -1), r_in)
            core0 = torch.einsum("oikl,oa,ib->abkl", w, u0, v0)
            with tl.backend_context("pytorch"), warnings.catch_warnings():
                # tensorly asks its SVD for more vectors than a small unfolding has and says so
                warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
                (core_w, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1],
                                                            n_iter_max=self.n_iter_max, init=(core0, [u0, v0]))
        except Exception as exc:  # noqa: BLE001
            raise self.fail(f"tensorly failed on layer {name!r} at ranks ({r_out}, {r_in}): "
                            f"{type(exc).__name__}: {exc}") from exc
        with torch.no_grad():
            first.weight.copy_(u_in.t().reshape(r_in, conv.in_channels, 1, 1).to(dtype))
            core.weight.copy_(core_w.to(dtype))
            last.weight.copy_(u_out.reshape(conv.out_channels, r_out, 1, 1).to(dtype))
            if conv.bias is not None:
                last.bias.copy_(conv.bias.detach())
        return seq


def _tucker1(conv: nn.Conv2d, r: int, mode: str, structure_only: bool) -> nn.Sequential:
    """Project one channel mode of ``conv`` onto its ``r`` leading singular vectors (two convs).

    ``mode="out"``: ``kxk (C_in -> r, U^T W)`` -> ``1x1 (r -> C_out, U)``; ``mode="in"``:
    ``1x1 (C_in -> r, V^T)`` -> ``kxk (r -> C_out, W V)``. A one-mode projection onto the leading
    singular subspace of that unfolding is the best rank-``r`` approximation in that mode.
    """
    dev, dtype = conv.weight.device, conv.weight.dtype
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    if mode == "out":
        spatial = nn.Conv2d(conv.in_channels, r, conv.kernel_size, bias=False, **kw)
        point = nn.Conv2d(r, conv.out_channels, 1, bias=conv.bias is not None)
        seq = nn.Sequential(spatial, point)
    else:
        point = nn.Conv2d(conv.in_channels, r, 1, bias=False)
        spatial = nn.Conv2d(r, conv.out_channels, conv.kernel_size, bias=conv.bias is not None, **kw)
        seq = nn.Sequential(point, spatial)
    seq = seq.to(device=dev, dtype=dtype)
    if structure_only:
        return seq
    w = conv.weight.detach().float()
    with torch.no_grad():
        if mode == "out":
            u = _leading(w.reshape(w.shape[0], -1), r)                       # C_out x r
            spatial.weight.copy_(torch.einsum("oikl,oa->aikl", w, u).to(dtype))
            point.weight.copy_(u.reshape(conv.out_channels, r, 1, 1).to(dtype))
            bias_of = point
        else:
            v = _leading(w.transpose(0, 1).reshape(w.shape[1], -1), r)       # C_in x r
            point.weight.copy_(v.t().reshape(r, conv.in_channels, 1, 1).to(dtype))
            spatial.weight.copy_(torch.einsum("oikl,ib->obkl", w, v).to(dtype))
            bias_of = spatial
        if conv.bias is not None:
            bias_of.bias.copy_(conv.bias.detach())
    return seq


def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``m`` (eigenvectors of ``m m^T``)."""
    _, vec = torch.linalg.eigh((m @ m.t()).double())
    return vec[:, -r:].flip(1).to(m.dtype).contiguous()


def _svd_linear(fc: nn.Linear, r: int, structure_only: bool) -> nn.Sequential:
    """Rank-``r`` truncated SVD of a Linear layer as two Linear layers.

    The leading singular subspace comes from the Gram matrix of the smaller side (``W W^T`` or
    ``W^T W``, at most 4096 x 4096 for VGG/AlexNet), so the 4096 x 25088 layers of VGG take
    seconds instead of the minutes of a full SVD; the result is the same optimal rank-``r``
    approximation (the projection of ``W`` onto its top-``r`` singular vectors).
    """
    dev, dtype = fc.weight.device, fc.weight.dtype
    first = nn.Linear(fc.in_features, r, bias=False)
    second = nn.Linear(r, fc.out_features, bias=fc.bias is not None)
    seq = nn.Sequential(first, second).to(device=dev, dtype=dtype)
    if structure_only:
        return seq
    w = fc.weight.detach().float()
    with torch.no_grad():
        if w.shape[0] <= w.shape[1]:
            u = _leading(w, r)                      # out x r, orthonormal
            first.weight.copy_((u.t() @ w).to(dtype))
            second.weight.copy_(u.to(dtype))
        else:
            v = _leading(w.t(), r)                  # in x r, orthonormal
            first.weight.copy_(v.t().to(dtype))
            second.weight.copy_((w @ v).to(dtype))
        if fc.bias is not None:
            second.bias.copy_(fc.bias.detach())
    return seq
