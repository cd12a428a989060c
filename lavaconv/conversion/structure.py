"""ANN (canonical fx graph) → float spiking :class:`~lavaconv.ir.network.Network`.

Every ReLU becomes an IF population, the model output a readout. Between two populations the
ANN is linear; each path of that linear map must be one synapse: conv, linear, (avg-pool →)
flatten → linear (composed into one Dense), avg-pool (a depthwise conv) or identity (a depthwise
1x1 conv). Normalisation scales every synapse by ``lambda_src / lambda_tgt`` (S-ResNet eq. 2),
so the residual shortcut rule of S-ResNet eq. 3-6 needs no special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from lavaconv.ann.stats import ActivationStats, NormSpec
from lavaconv.conversion.align import align
from lavaconv.conversion.pooling import relu_pools
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import (
    ENCODINGS,
    IF,
    MAX_BURST,
    POOLS,
    READOUTS,
    Conv,
    Dense,
    Input,
    MaxPool,
    Network,
    Readout,
)

aten = torch.ops.aten
MAX_COMPOSED_INPUTS = 1 << 16


NEURONS = {"rmp": "subtract", "if": "zero", "snm": "snm",  # option -> IF.reset
           "sigma-delta": "subtract"}  # IF stands in until conversion.sigma_delta replaces it
CORRECTIONS = ("none", "bias", "potential")
MAXPOOLS = (*POOLS, "relu")  # spiking max-pool modes, or ReLU units (conversion/pooling.py)


@dataclass(frozen=True)
class ConvertOptions:
    """Every conversion method, as one value each; they compose freely.

    The data-driven ones (``balance``, ``zeta='auto'``, ``correction``, per-neuron norms)
    need calibration items: :func:`~lavaconv.conversion.build_network` applies them.
    """

    norm: NormSpec = field(default_factory=NormSpec)
    neuron: str = "rmp"  # rmp: reset by subtraction; if: reset to zero; snm: SNM eq. 7-11
    input: str = "analog"  # analog current (Rueckauer sec. 3.4) or signed Poisson (RMP sec. 3.1)
    v_init: float = 0.5  # initial potential in thresholds; 0.5 halves the expected quantization
    # error of the spike count (Bu et al., ICLR 2022, "Optimal ANN-SNN conversion", Theorem 2);
    # 0 is the seed papers' choice
    readout: str = "potential"  # potential | count | softmax (Rueckauer sec. 3.5)
    shortcut_norm: bool = True  # S-ResNet eq. 3-6; False: identity shortcuts keep weight 1
    balance: float | None = None  # RMP sec. 4.1 threshold balancing, alpha (None: off)
    zeta: float | str = 1.0  # S-ResNet eq. 14 weight factor; "auto": searched (eq. 12-13)
    correction: str = "none"  # none | bias | potential: Li et al., ICML 2021 calibration
    burst: int = 1  # K > 1: threshold lambda / K, up to K spikes a step (Li & Zeng, IJCAI 2022)
    maxpool: str = "gate"  # gate: Rueckauer sec. 3.6; running: the running maximum's increase;
    # relu: two layers of IF units per 2x2 window (conversion/pooling.py; stock processes only)
    align: bool = False  # delay a population's early inputs (shortcuts) to arrive with the last
    calib_steps: int = 64  # timesteps of the SNN runs behind the data-driven methods
    calib_items: int = 256  # calibration items those runs use
    sd_threshold: float = 0.02  # sigma-delta: delta threshold in units of each layer's lambda

    def __post_init__(self) -> None:
        checks = [("neuron", self.neuron, tuple(NEURONS)), ("input", self.input, ENCODINGS),
                  ("readout", self.readout, READOUTS),
                  ("correction", self.correction, CORRECTIONS), ("maxpool", self.maxpool, MAXPOOLS)]
        for name, value, allowed in checks:
            if value not in allowed:
                raise LavaconvError(f"--{name} {value!r}: expected one of {', '.join(allowed)}")
        if self.balance is not None and not 0 < self.balance <= 4:
            raise LavaconvError(f"--balance {self.balance}: alpha must lie in (0, 4]")
        if not (isinstance(self.burst, int) and 1 <= self.burst <= MAX_BURST):
            raise LavaconvError(f"--burst {self.burst!r}: expected an integer in [1, {MAX_BURST}]")
        if self.burst > 1 and self.neuron == "if":
            raise LavaconvError("--burst > 1 needs reset by subtraction (--neuron rmp or snm): "
                                "a hard reset would drop the spikes of a burst")
        if self.zeta != "auto" and not (isinstance(self.zeta, (int, float)) and
                                        0 < self.zeta < math.inf):
            raise LavaconvError(f"--zeta {self.zeta!r}: expected a positive factor or 'auto'")
        if not (isinstance(self.sd_threshold, (int, float)) and 0 < self.sd_threshold <= 1):
            raise LavaconvError(f"--sd-threshold {self.sd_threshold!r}: expected a value in "
                                "(0, 1] (the delta threshold in units of a layer's scale)")
        if self.neuron == "sigma-delta":
            clash = [name for name, on in (
                ("--input poisson", self.input != "analog"),
                (f"--readout {self.readout}", self.readout != "potential"),
                ("--balance", self.balance is not None), ("--zeta", self.zeta != 1.0),
                (f"--correction {self.correction}", self.correction != "none"),
                ("--burst", self.burst != 1), ("--align", self.align),
                ("--norm ...:neuron", self.norm.per_neuron)) if on]
            if clash:
                raise LavaconvError(f"--neuron sigma-delta does not combine with {clash[0]} "
                                    "(a sigma-delta unit sends its activation's change)")
        if not 0 <= self.v_init <= 1:  # also refuses NaN
            raise LavaconvError(f"--v-init {self.v_init!r}: expected a number in [0, 1]")
        for name, value in (("calib-steps", self.calib_steps), ("calib-items", self.calib_items)):
            if not (isinstance(value, int) and value >= 1):
                raise LavaconvError(f"--{name} {value!r}: expected an integer >= 1")

    @property
    def needs_data(self) -> bool:
        """Whether :func:`~lavaconv.conversion.build_network` must run (not :func:`convert`)."""
        return (self.norm.per_neuron or self.balance is not None or self.zeta == "auto"
                or self.correction != "none")

    def describe(self) -> dict:
        """The options as JSON-able data (for ``Network.meta``)."""
        return {"neuron": self.neuron, "norm": str(self.norm), "input": self.input,
                "v_init": self.v_init, "readout": self.readout,
                "shortcut_norm": self.shortcut_norm, "balance": self.balance,
                "zeta": self.zeta, "correction": self.correction, "burst": self.burst,
                "maxpool": self.maxpool, "align": self.align,
                **({"sd_threshold": self.sd_threshold} if self.neuron == "sigma-delta" else {})}


Op = tuple  # (kind, *params), applied by _apply


@dataclass
class _Term:
    source: str
    ops: list[Op]


@dataclass
class _Form:
    """A value of the ANN as a sum of linear paths from spike sources plus a bias map."""

    terms: list[_Term]
    bias: torch.Tensor | None  # output-shaped, no batch dim


@dataclass
class _Population:
    name: str
    kind: str  # "if" | "readout"
    shape: tuple[int, ...]
    terms: list[_Term]
    bias: torch.Tensor | None
    where: str
    clip: float | None = None  # a clipped ReLU's ceiling (ReLU6: 6)


def _apply(op: Op, x: torch.Tensor) -> torch.Tensor:
    """Apply one linear op (without bias) to a batch ``x``."""
    kind = op[0]
    if kind == "conv":
        _, w, stride, padding, dilation, groups = op
        return F.conv2d(x, w, None, stride, padding, dilation, groups)
    if kind == "linear":
        return F.linear(x, op[1])
    if kind == "avgpool":
        return aten.avg_pool2d.default(x, *op[1:])
    if kind == "flatten":
        return x.flatten(1)
    raise AssertionError(kind)


def _where(node: torch.fx.Node) -> str:
    return node.meta.get("lavaconv_where", node.name)


def trace(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> list:
    """Walk the canonical graph once: populations, max-pool gates and the input, in order."""
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    values: dict[str, _Form | str] = {}
    out: list = []

    def form(arg) -> _Form:
        value = values[arg.name]
        return _Form([_Term(value, [])], None) if isinstance(value, str) else value

    def shape(node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape[1:])

    def linear_op(node: torch.fx.Node, op: Op, bias: torch.Tensor | None,
                  src: _Form | None = None) -> _Form:
        src = form(node.args[0]) if src is None else src
        base = _apply(op, src.bias.unsqueeze(0))[0] if src.bias is not None else None
        if bias is not None:
            bias = bias.reshape(-1, *([1] * (len(shape(node)) - 1))).expand(shape(node))
            base = bias if base is None else base + bias
        return _Form([_Term(t.source, [*t.ops, op]) for t in src.terms], base)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values[node.name] = node.name
            out.append(("input", node.name, shape(node)))
        elif node.op == "get_attr":
            values[node.name] = _Form([], getattr(gm, node.target).detach().clone())
        elif node.op == "output":
            arg = node.args[0]
            arg = arg[0] if isinstance(arg, (tuple, list)) else arg
            f = form(arg)
            out.append(_Population("output", "readout", shape(arg), f.terms, f.bias, _where(arg)))
        elif node.target in (aten.relu.default, aten.hardtanh.default):
            f = form(node.args[0])
            clip = float(node.args[2]) if node.target == aten.hardtanh.default else None
            out.append(_Population(node.name, "if", shape(node), f.terms, f.bias, _where(node),
                                   clip))
            values[node.name] = node.name
        elif node.target == aten.max_pool2d.default:
            src = values[node.args[0].name]
            if not isinstance(src, str):
                raise LavaconvError(f"max-pool at {_where(node)} does not follow a ReLU")
            args = list(node.args) + [None] * 6
            kernel = _pair(args[1])
            stride = _pair(args[2] or args[1])
            padding = _pair(args[3] or 0)
            if (args[4] not in (None, 1, [1, 1], (1, 1))) or args[5]:
                raise LavaconvError(f"max-pool at {_where(node)}: dilation/ceil_mode unsupported")
            out.append(("maxpool", node.name, shape(node), src, kernel, stride, padding))
            values[node.name] = node.name
        elif node.target == aten.conv2d.default:
            args = list(node.args) + [None] * 7
            w = getattr(gm, args[1].target).detach()
            b = getattr(gm, args[2].target).detach() if args[2] is not None else None
            op = ("conv", w, _pair(args[3] or 1), _pair(args[4] or 0), _pair(args[5] or 1),
                  args[6] or 1)
            values[node.name] = linear_op(node, op, b)
        elif node.target == aten.linear.default:
            w = getattr(gm, node.args[1].target).detach()
            has_b = len(node.args) > 2 and node.args[2] is not None
            b = getattr(gm, node.args[2].target).detach() if has_b else None
            values[node.name] = linear_op(node, ("linear", w), b)
        elif node.target == aten.avg_pool2d.default:
            values[node.name] = linear_op(node, ("avgpool", *node.args[1:]), None)
        elif node.target == aten.flatten.using_ints:
            values[node.name] = linear_op(node, ("flatten",), None)
        elif node.target == aten.cat.default:  # each part embedded in its channel range
            total, lo, terms, bias = shape(node)[0], 0, [], torch.zeros(shape(node))
            for part in node.args[0]:
                n = shape(part)[0]
                embed = torch.zeros(total, n)
                embed[lo:lo + n] = torch.eye(n)
                op = (("linear", embed) if len(shape(node)) == 1
                      else ("conv", embed[:, :, None, None], (1, 1), (0, 0), (1, 1), 1))
                f = linear_op(node, op, None, form(part))
                terms += f.terms
                if f.bias is not None:
                    bias = bias + f.bias
                lo += n
            values[node.name] = _Form(terms, bias)
        elif node.target == aten.add.Tensor:
            a, b = (form(x) for x in node.args)
            bias = a.bias if b.bias is None else b.bias if a.bias is None else a.bias + b.bias
            values[node.name] = _Form(a.terms + b.terms, bias)
        else:
            raise LavaconvError(f"unsupported op {node.target} at {_where(node)}")
    return out


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[-1]))


def _scale(stats: ActivationStats | None, spec: NormSpec, per_channel: bool) -> np.ndarray:
    """lambda of one population: max or p-th percentile of its ANN activations."""
    if stats is None or spec.method == "none":
        return np.ones(())
    value = stats.max(per_channel) if spec.method == "max" else stats.percentile(
        spec.percentile, per_channel)
    value = np.asarray(value, dtype=np.float64)
    if per_channel:  # a channel that never fired keeps the layer's scale
        layer = stats.max(False) if spec.method == "max" else stats.percentile(
            spec.percentile, False)
        value = np.where(value > 0, value, max(float(layer), 1e-12))
    return np.maximum(value, 1e-12)


def _synapse(term: _Term, src_shape: tuple[int, ...], target: str, where: str):
    """One synapse that computes the term's linear path (weights still un-normalised).

    A path of convolutions and avg-pools becomes one Conv where that is exact (a pointwise
    conv on either side of the other op, see :func:`_merge`); a path through flatten/linear
    becomes one Dense by pushing an identity basis through it.
    """
    ops = term.ops
    kinds = [op[0] for op in ops]
    if kinds == ["conv"]:
        _, w, stride, padding, dilation, groups = ops[0]
        if dilation != (1, 1):
            raise LavaconvError(f"{where}: dilated convolution is not supported")
        return Conv(term.source, target, w.numpy().astype(np.float64), stride, padding, groups)
    if kinds == ["linear"] or kinds == ["flatten", "linear"]:
        return Dense(term.source, target, ops[-1][1].numpy().astype(np.float64))
    if "linear" in kinds or "flatten" in kinds:
        n_in = int(np.prod(src_shape))
        if n_in > MAX_COMPOSED_INPUTS:
            raise LavaconvError(f"{where}: the path {' → '.join(kinds)} into a linear layer has "
                                f"{n_in} inputs, too many to compose into one synapse (limit "
                                f"{MAX_COMPOSED_INPUTS}); pool to a smaller map first")
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *src_shape)
        for op in ops:
            basis = _apply(_double(op), basis)
        return Dense(term.source, target, basis.T.numpy())
    channels = src_shape[0]
    if kinds == []:
        if len(src_shape) == 1:
            return Dense(term.source, target, np.eye(channels))
        return Conv(term.source, target, np.ones((channels, 1, 1, 1)), groups=channels)
    convs = [_as_conv(op, where) for op in ops]
    merged = convs[0]
    for i, conv in enumerate(convs[1:], 1):
        merged = _merge(merged, conv, ops[:i + 1], src_shape)
        if merged is None:
            raise LavaconvError(
                f"{where}: the linear path {' → '.join(kinds)} between two ReLUs is no single "
                "convolution (zero padding inside it); put a ReLU after "
                f"{' → '.join(kinds[:i])}, or make one of the two convolutions 1x1")
    w, stride, padding, groups = merged
    if groups == 0:  # a lone avg-pool: a depthwise convolution
        w, groups = w.expand(channels, 1, *w.shape[2:]).clone(), channels
    w, groups = _depthwise_if_diagonal(w, groups)
    return Conv(term.source, target, w, tuple(stride), tuple(padding), groups)


ConvSpec = tuple  # (weight (O, I/groups, kh, kw) float64, stride, padding, groups)


def _as_conv(op: Op, where: str) -> ConvSpec:
    """A conv or avg-pool op as (weight, stride, padding, groups), float64, dilation 1."""
    if op[0] == "conv":
        _, w, stride, padding, dilation, groups = op
        if dilation != (1, 1):
            raise LavaconvError(f"{where}: dilated convolution is not supported")
        return w.double(), stride, padding, groups
    _, kernel, stride, padding, ceil_mode, count_pad, divisor = (list(op) + [None] * 7)[:7]
    kernel, stride, padding = _pair(kernel), _pair(stride or kernel), _pair(padding or 0)
    if ceil_mode or (padding != (0, 0) and count_pad is False):
        raise LavaconvError(f"{where}: avg-pool with ceil_mode or count_include_pad=False "
                            "is not a fixed convolution")
    area = divisor or kernel[0] * kernel[1]
    return torch.full((1, 1, *kernel), 1.0 / area, dtype=torch.float64), stride, padding, 0


def _full(w: torch.Tensor, groups: int, channels: int) -> torch.Tensor:
    """A grouped (or, with groups 0, channel-shared depthwise) weight as a full (O, I, kh, kw)."""
    if groups == 0:  # an avg-pool: the same kernel on every channel
        return torch.eye(channels, dtype=w.dtype)[:, :, None, None] * w
    if groups == 1:
        return w
    out_ch, per_group = w.shape[:2]
    full = torch.zeros(out_ch, per_group * groups, *w.shape[2:], dtype=w.dtype)
    for o in range(out_ch):
        g = o // (out_ch // groups)
        full[o, g * per_group:(g + 1) * per_group] = w[o]
    return full


def _merge(a: ConvSpec, b: ConvSpec, ops: list[Op], src_shape: tuple[int, ...]) -> ConvSpec | None:
    """One convolution equal to ``b`` after ``a``, or None if no single one is.

    Exact when ``b`` is pointwise (1x1, stride 1, no padding: the channel mix moves into
    ``a``), when ``a`` is 1x1 without padding (``b``'s kernel dilated by ``a``'s stride), or
    when neither pads (the composed kernel from impulse responses); zero padding between two
    larger kernels is no convolution.
    Checked on a random input against the ops themselves.
    """
    (wa, sa, pa, ga), (wb, sb, pb, gb) = a, b
    channels = src_shape[0]
    wa = _full(wa, ga, channels)
    wb = _full(wb, gb, wa.shape[0])
    if wb.shape[2:] == (1, 1) and tuple(sb) == (1, 1) and tuple(pb) == (0, 0):
        merged = (torch.einsum("oc,cikl->oikl", wb[:, :, 0, 0], wa), sa, pa, 1)
    elif wa.shape[2:] == (1, 1) and tuple(pa) == (0, 0):
        kh, kw = wb.shape[2:]
        dilated = torch.zeros(*wb.shape[:2], (kh - 1) * sa[0] + 1, (kw - 1) * sa[1] + 1,
                              dtype=wb.dtype)
        dilated[:, :, ::sa[0], ::sa[1]] = wb
        merged = (torch.einsum("ockl,ci->oikl", dilated, wa[:, :, 0, 0]),
                  (sa[0] * sb[0], sa[1] * sb[1]), (pb[0] * sa[0], pb[1] * sa[1]), 1)
    elif tuple(pa) == (0, 0) and tuple(pb) == (0, 0):  # no padding: impulse responses
        kh = (wb.shape[2] - 1) * sa[0] + wa.shape[2]
        kw = (wb.shape[3] - 1) * sa[1] + wa.shape[3]
        impulses = torch.eye(channels * kh * kw, dtype=torch.float64).reshape(-1, channels, kh, kw)
        out = F.conv2d(F.conv2d(impulses, wa, None, sa), wb, None, 1)[:, :, 0, 0]
        merged = (out.T.reshape(-1, channels, kh, kw), (sa[0] * sb[0], sa[1] * sb[1]), (0, 0), 1)
    else:
        return None
    x = torch.randn(2, *src_shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    want = x
    for op in ops:
        want = _apply(_double(op), want)
    got = F.conv2d(x, merged[0], None, merged[1], merged[2])
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
        return None
    return merged


def _depthwise_if_diagonal(w: torch.Tensor, groups: int) -> tuple[np.ndarray, int]:
    """A merged full weight as a depthwise one where it is diagonal in the channels."""
    out_ch, in_ch = w.shape[:2]
    if groups == 1 and out_ch == in_ch and out_ch > 1:
        off = w.clone()
        off[torch.arange(out_ch), torch.arange(out_ch)] = 0
        if not off.any():
            return w[torch.arange(out_ch), torch.arange(out_ch)][:, None].numpy(), out_ch
    return w.numpy().copy(), groups


def _double(op: Op) -> Op:
    return tuple(x.double() if isinstance(x, torch.Tensor) else x for x in op)


def _source_scale(syn, lam_src: np.ndarray, src_shape: tuple[int, ...]) -> np.ndarray:
    """lambda of each synapse input index, broadcastable against the weight."""
    lam = np.broadcast_to(lam_src, (src_shape[0],)) if lam_src.ndim else lam_src
    if isinstance(syn, Dense):
        if lam.ndim == 0:
            return lam
        spatial = int(np.prod(src_shape[1:])) if len(src_shape) > 1 else 1
        return np.repeat(lam, spatial)[None, :]
    if lam.ndim == 0:
        return lam
    out_ch, in_per_group = syn.weight.shape[:2]
    per_group = out_ch // syn.groups
    idx = (np.arange(out_ch)[:, None] // per_group) * in_per_group + np.arange(in_per_group)
    return lam[idx][:, :, None, None]


def _target_scale(lam: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return lam.reshape(-1, *([1] * (weight.ndim - 1))) if lam.ndim else lam


def convert(
    gm: torch.fx.GraphModule,
    input_shape: tuple[int, ...],
    stats: dict[str, ActivationStats],
    options: ConvertOptions = ConvertOptions(),
    *,
    neuron_scales: dict[str, np.ndarray] | None = None,
) -> Network:
    """Build the float spiking network; ``stats`` is keyed by population name.

    ``neuron_scales`` (population → per-neuron lambda, from
    :func:`lavaconv.ann.stats.neuron_scales`) is needed for a per-neuron norm. The other
    data-driven options are left to :func:`~lavaconv.conversion.build_network`.
    """
    norm = options.norm
    if norm.per_neuron and neuron_scales is None:
        raise LavaconvError(f"--norm {norm}: neuron-wise normalisation needs per-neuron "
                            "statistics; use lavaconv.conversion.build.build_network")
    items = trace(gm, input_shape)
    nodes: dict = {}
    synapses: list = []
    scales: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    t_ready: dict[str, int] = {}
    clips: dict[str, float] = {}  # clipped-ReLU population -> its ceiling
    for item in items:
        if isinstance(item, tuple) and item[0] == "input":
            _, name, shape = item
            scale = 1.0
            if options.input == "poisson":
                scale = float(np.maximum(stats[name].max(False), 1e-12)) if name in stats else 1.0
            x_max = float(stats[name].max(False)) if name in stats else None
            nodes[name] = Input(shape, options.input, scale, x_max=x_max)
            scales[name], shapes[name], t_ready[name] = np.asarray(scale), shape, 0
        elif isinstance(item, tuple):
            _, name, shape, src, kernel, stride, padding = item
            nodes[name] = MaxPool(shape, src, kernel, stride, padding, scales[src],
                                  options.maxpool if options.maxpool in POOLS else "gate")
            scales[name], shapes[name], t_ready[name] = scales[src], shape, t_ready[src]
        else:
            pop = item
            if not pop.terms:
                raise LavaconvError(f"{pop.where}: layer receives no input from the network")
            readout = pop.kind == "readout"
            theta = np.ones(())
            if readout:  # one scalar keeps the argmax unchanged
                lam = _scale(stats.get(pop.name), NormSpec("max" if norm.method != "none"
                                                           else "none"), False)
            elif norm.per_neuron:
                lam, theta = _neuron_thresholds(_clipped(neuron_scales[pop.name], pop.clip),
                                                pop.shape)
            else:
                lam = _clipped(_scale(stats.get(pop.name), norm, norm.per_channel), pop.clip)
            if pop.clip is not None:
                clips[pop.name] = pop.clip
            if not readout:  # K spikes of lambda / K: K-fold resolution, same clip (burst)
                lam = lam / options.burst
            # first input: the earliest term's arrival (--align: the latest, see align.py)
            t_start = min(t_ready[t.source] for t in pop.terms) + 1
            for term in pop.terms:
                syn = _synapse(term, shapes[term.source], pop.name, pop.where)
                if term.ops or len(pop.terms) == 1 or options.shortcut_norm:
                    w_scale = _source_scale(syn, scales[term.source], shapes[term.source])
                    syn.weight = syn.weight * w_scale / _target_scale(lam, syn.weight)  # eq. 2
                syn.weight = syn.weight * (options.zeta if options.zeta != "auto" else 1.0)
                synapses.append(syn)
            bias = pop.bias.double().numpy() if pop.bias is not None else np.zeros(())
            bias = _compact(bias, pop.shape) / _target_scale(lam, np.zeros((1,) * len(pop.shape)))
            node = (Readout(pop.shape, bias, t_start, lam, mode=options.readout) if readout
                    else IF(pop.shape, bias, theta, NEURONS[options.neuron], t_start, lam,
                            v_init=options.v_init * theta, payload=theta, burst=options.burst))
            nodes[pop.name] = node
            scales[pop.name], shapes[pop.name], t_ready[pop.name] = lam, pop.shape, t_start
    meta = {**options.describe(), "input_shape": list(input_shape)}
    if clips:
        meta["clips"] = clips
    net = Network(nodes, synapses, "float", meta)
    if options.maxpool == "relu":
        net = relu_pools(net, options.v_init)
    return align(net) if options.align else net


def _clipped(lam: np.ndarray, clip: float | None) -> np.ndarray:
    """A clipped ReLU's scale: the rate saturates at lambda, so lambda never exceeds the clip
    (and the IF neuron computes the clip itself)."""
    return lam if clip is None else np.minimum(lam, clip)


def _neuron_thresholds(lam: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Neuron-wise normalisation (SNM eq. 14) as a layer scale (the largest lambda_j) and
    relative thresholds theta_j = lambda_j / that; a neuron never active keeps theta = 1."""
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), shape)
    top = float(lam.max()) if lam.size and lam.max() > 0 else 1.0
    return np.asarray(top), np.where(lam > 0, lam / top, 1.0)

def _compact(bias: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel ``(C, 1, 1)`` bias where the map is constant over space, else the map."""
    bias = np.broadcast_to(bias, shape) if bias.ndim else np.zeros(shape) + bias
    if len(shape) == 3 and np.all(bias == bias[:, :1, :1]):
        return np.ascontiguousarray(bias[:, :1, :1])
    return np.ascontiguousarray(bias)
