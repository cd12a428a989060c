"""Fast batched PyTorch simulator of a :class:`~lavaconv.ir.network.Network`.

Implements the update equations of ``docs/design.md`` section 3 exactly, in float mode
(float32) and in integer mode (integers held exactly in float32 or float64, see
:class:`_Current`). The network runs population by population over the whole spike train.
A population's synaptic input is computed a chunk of steps at a time (:data:`CHUNK_SIZE`):
the source train's steps ``(k, B, ...)`` are folded into one batch, shifted by the synapse
delay, and the neuron update consumes the sum while it is still in cache; an analog input's
synapse is computed once (the payload is the same every step). Convolutions run in
channels-last layout. Spikes are written in place into the population's train, and the
statistics (spike counts per step, per neuron and checkpoint; saturation) take one pass.

On the CPU the neuron updates run as the single-pass kernels of :mod:`lavaconv.sim.kernels`
(the torch loops here are their reference and the path on other devices): a chunk is then a
block of items (:data:`STATE_SIZE` neurons, whose state stays in cache) times a block of
steps, and a binary population's train is held as bytes (uint8), which the next synapse reads
in one pass and the counting kernel sums.

In integer mode every synaptic sum is an integer. A synapse whose worst case
``max_o sum_i |W[o, i]| * max |payload|`` stays below 2**23 is computed in float32, which is
then exact whatever the order of summation (every partial sum is an integer below 2**24) and
never wraps; any other synapse runs in float64 (exact below 2**53), with Lava's 24-bit wrap
for convolutions. A float32-exact synapse from a binary source (spikes 0 or 1) on the CPU whose
weights are int8 times a power of two per output channel runs as a oneDNN u8 x s8 kernel
(:class:`_Int8`): its int32 sums, times the power of two, are the same integers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lavaconv.ir.fixedpoint import THRESHOLD_SHIFT, wrap
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout, Synapse
from lavaconv.sim import kernels, lif
from lavaconv.sim.result import SimResult  # noqa: F401 - re-exported

#: ``probe(name, current, train)`` after each IF population: ``current`` (T, B, *shape) is
#: what the population adds to v at each step (synaptic input, gain and bias), ``train`` the
#: payload it sent (T, B, *shape).
Probe = Callable[[str, torch.Tensor, torch.Tensor], None]

#: whether CPU tensors run the neuron loops as :mod:`lavaconv.sim.kernels` (the torch loops
#: here are the reference, and the path on other devices)
KERNELS = True

#: neurons whose state the CPU kernels step a chunk of steps at a time (whole items): about a
#: megabyte of state, which stays in cache from one step to the next
STATE_SIZE = 2**16

#: synaptic input entries (steps x batch x neurons) computed at once: at least one step, a
#: batch of items large enough for an efficient convolution, its output small enough to be
#: summed and consumed while still in cache
CHUNK_SIZE = 2**20


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encode_input(
    net: Network, x, timesteps: int, seed: int = 0, device: str | torch.device | None = "cpu"
) -> torch.Tensor:
    """Payload the input node sends at each step: ``(T, B, *shape)``.

    Analog: ``x / scale`` (float) or ``round(x * gain)`` clipped to the payload bits (int);
    Poisson: signed spikes with ``P(s = ±1) = |x| / scale`` (RMP-SNN sec. 3.1), seeded.
    """
    node = net.nodes[net.input_name]
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=_device(device))
    int_mode = net.numeric == "int"
    if node.encoding in ("analog", "delta"):  # delta: what the Delta encoder receives
        if int_mode:
            limit = 2 ** (node.payload_bits - 1) - 1
            p = torch.clamp(torch.round(x * node.gain), -limit, limit).to(torch.int64)
        else:
            p = (x / node.scale).to(torch.float32)
        return p.unsqueeze(0).expand(timesteps, *p.shape)
    if node.encoding != "poisson":
        raise ValueError(f"unknown input encoding {node.encoding!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand((timesteps, *x.shape), generator=gen, dtype=torch.float64).to(x.device)
    p = torch.sign(x) * (u < x.abs() / node.scale)
    return p.to(torch.int64 if int_mode else torch.float32)


def is_lif(net: Network, node) -> bool:
    """Whether ``node`` runs the stock LIF arithmetic (:mod:`lavaconv.sim.lif`, int mode)."""
    return net.numeric == "int" and ((isinstance(node, IF) and node.reset == "lif")
                                     or (isinstance(node, Readout) and node.lif))


def _shift(net: Network, syn: Synapse) -> int:
    """The weight exponent a stock LIF target applies in the synapse (``Dense weight_exp``,
    ``Conv`` weights shifted): its ``a_exp``; 0 for any other target (the neuron applies it)."""
    target = net.nodes[syn.target]
    return target.a_exp if is_lif(net, target) else 0


class _Int8(NamedTuple):
    """A synapse as a oneDNN u8 x s8 kernel with int32 sums: ``weight`` is prepacked ``W / g``
    (int8, ``g`` a power of two per output channel), ``scale`` (O,) is ``g * 2**max(shift, 0)``.
    The plan's bound keeps every sum times ``scale`` below 2**23, so the float32 output is
    exact. Its source sends 0 or 1 only: on CPUs without VNNI, oneDNN sums pairs of u8 x s8
    products into int16 with saturation, which |w1 + w2| <= 254 never reaches."""

    weight: torch.Tensor
    scale: torch.Tensor
    channels_last: bool = False  # a dense synapse's (C, H, W) source read as (H, W, C)


class _Plan(NamedTuple):
    """Arithmetic of one synapse: the dtype of the sum, whether it must wrap to 24 bits, the
    exponent applied before the wrap, and the int8 kernel when it runs as one."""

    dtype: torch.dtype
    wraps: bool
    shift: int
    int8: _Int8 | None = None
    weight: torch.Tensor | None = None  # :func:`_weight`, made once for a run


#: multiply-adds per source entry from which the int8 kernel beats the float one (it casts
#: each entry to uint8 first; measured on one core with AMX: a 1x1 or depthwise convolution
#: is slower, a 3x3 one 1.6-4x faster; a dense synapse: its output count)
INT8_MIN_MACS = 48


def _plan(net: Network, syn: Synapse, train: torch.Tensor | None = None) -> _Plan:
    """How to compute ``syn``'s sums from its source's payload ``train`` (T, B, *shape), see
    the module docstring."""
    plan = _float_plan(net, syn)
    if train is None:
        return plan
    int8 = None
    if plan.dtype == torch.float32 and train.device.type == "cpu" and (
            net.numeric == "int" and net.is_binary(syn.source) and _onednn()):
        last = train.dim() == 5 and train[0].is_contiguous(memory_format=torch.channels_last)
        if isinstance(syn, Conv):
            kh, kw = syn.weight.shape[2:]
            macs = len(syn.weight) // syn.groups * kh * kw / (syn.stride[0] * syn.stride[1])
            worth = macs >= INT8_MIN_MACS
        else:  # on top of its multiply-adds, the float path transposes a channels-last source
            worth = last or len(syn.weight) >= INT8_MIN_MACS
        int8 = _int8(syn, plan.shift, train.shape[2:] if last else None) if worth else None
    if int8 is not None:
        return plan._replace(int8=int8)
    return plan._replace(weight=_weight(syn, plan.dtype, plan.shift, train.device))


def _float_plan(net: Network, syn: Synapse) -> _Plan:
    """:func:`_plan` without the int8 kernel: float32, or float64 where an integer sum may not
    be exact in float32."""
    if net.numeric != "int":
        return _Plan(torch.float32, False, 0)
    shift = _shift(net, syn)
    w = np.abs(syn.weight).reshape(len(syn.weight), -1).sum(axis=1).max(initial=0)
    if float(w) * net.max_payload(syn.source) * 2.0 ** max(shift, 0) >= 2**23:
        return _Plan(torch.float64, isinstance(syn, Conv), shift)
    return _Plan(torch.float32, False, shift)


def _weight(syn: Synapse, dtype: torch.dtype, shift: int, device: torch.device) -> torch.Tensor:
    """``syn``'s weights as :func:`_apply_synapse` computes with them (times ``2**shift`` where
    the shift is positive; a convolution's channels-last)."""
    w = torch.as_tensor(syn.weight, dtype=dtype, device=device) * 2.0 ** max(shift, 0)
    return w.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w


@functools.cache
def _onednn() -> bool:
    """Whether oneDNN's int8 convolution and linear kernels run here (tried once on a small
    case: a build or CPU may lack them)."""
    if not torch.backends.mkldnn.is_available():
        return False
    w = np.arange(-72, 72).reshape(4, 4, 3, 3) * 2
    s = (torch.arange(2 * 4 * 5 * 5) % 3 == 0).float().reshape(2, 4, 5, 5)
    cases = ((Conv("s", "a", w, padding=(1, 1)), s), (Dense("s", "a", w.reshape(4, -1)),
                                                         s[:, :, :3, :3]))
    try:
        return all(torch.equal(_apply_int8(syn, x, _int8(syn, 0)),
                               _apply_synapse(syn, x, _Plan(torch.float32, False, 0)))
                   for syn, x in cases)
    except (AttributeError, RuntimeError):
        return False


def _int8(syn: Synapse, shift: int, chw: Sequence[int] | None = None) -> _Int8 | None:
    """``syn`` as an int8 kernel (weights prepacked), or None where its weights are not int8
    times a power of two per output channel. A dense synapse reads its source channels-last
    if given its shape ``chw`` (C, H, W) (its weight columns reordered to match)."""
    w = np.asarray(syn.weight).reshape(len(syn.weight), -1)
    if not np.issubdtype(w.dtype, np.integer):
        if not np.all(np.isfinite(w) & (w == np.round(w)) & (np.abs(w) < 2**62)):
            return None
        w = w.astype(np.int64)
    bits = np.bitwise_or.reduce(np.abs(w).astype(np.int64), axis=1)
    g = np.where(bits == 0, 1, bits & -bits)  # each row's largest power-of-two factor
    q = w // g[:, None]
    if np.abs(q).max(initial=0) > 127:
        return None
    scale = torch.as_tensor(g * 2.0 ** max(shift, 0), dtype=torch.float32)
    if isinstance(syn, Dense):
        if chw is not None:
            q = q.reshape(len(q), *chw).transpose(0, 2, 3, 1)
        weight = torch.as_tensor(q.reshape(len(q), -1), dtype=torch.int8)
        return _Int8(torch.ops.onednn.qlinear_prepack(weight, None), scale, chw is not None)
    weight = torch.as_tensor(q.reshape(syn.weight.shape), dtype=torch.int8)
    packed = torch.ops.onednn.qconv_prepack(weight, scale, 1.0, 0, list(syn.stride),
                                            list(syn.padding), [1, 1], syn.groups, None)
    return _Int8(packed, scale)


def _pointwise(syn: Conv) -> bool:
    """A depthwise 1x1 convolution with stride 1 and no padding (one weight per channel)."""
    out_ch, in_per_group, kh, kw = syn.weight.shape
    return (kh, kw, in_per_group) == (1, 1, 1) and syn.groups == out_ch and tuple(
        syn.stride) == (1, 1) and tuple(syn.padding) == (0, 0)


def _apply_int8(syn: Synapse, s: torch.Tensor, k: _Int8) -> torch.Tensor:
    """``syn``'s float32 sums for 0/1 payloads ``s`` (N, *src_shape) by the int8 kernel."""
    zero = torch.zeros(len(k.scale), dtype=torch.int64)
    if isinstance(syn, Dense):
        if k.channels_last:  # (N, H, W, C), like the weight columns
            x = s.to(dtype=torch.uint8, memory_format=torch.channels_last)
            x = x.permute(0, 2, 3, 1).reshape(len(x), -1)
        else:
            x = s.to(torch.uint8).flatten(1)
        return torch.ops.onednn.qlinear_pointwise(
            x, 1.0, 0, k.weight, k.scale, zero, None, 1.0, 0, torch.float32, "none", [], "")
    x = s.to(dtype=torch.uint8, memory_format=torch.channels_last)  # one pass
    return torch.ops.onednn.qconv2d_pointwise(
        x, 1.0, 0, k.weight, k.scale, zero, None, list(syn.stride), list(syn.padding), [1, 1],
        syn.groups, 1.0, 0, torch.float32, "none", [], "")


def _scales_bytes(syn: Synapse, plan: _Plan, train: torch.Tensor) -> bool:
    """Whether ``syn`` scales each channel of a byte train (0/1: every product exact), which the
    CPU kernels can add to the sum themselves (an identity shortcut, :class:`_Shortcut`)."""
    return (train.dtype == torch.uint8 and isinstance(syn, Conv) and _pointwise(syn)
            and plan.weight is not None and not plan.wraps)


def _apply_synapse(syn: Synapse, s: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Synaptic output for a batch of source payloads ``s`` (N, *src_shape)."""
    dtype, wraps, shift, int8, _ = plan
    if int8 is not None:
        a = _apply_int8(syn, s, int8)
        return a.mul_(2.0**shift).floor_() if shift < 0 and isinstance(syn, Dense) else a
    w = plan.weight if plan.weight is not None else _weight(syn, dtype, shift, s.device)
    if isinstance(syn, Dense):  # a negative weight_exp floors each synapse's sum (stock Dense)
        a = s.to(dtype).flatten(1) @ w.T
        return a.mul_(2.0**shift).floor_() if shift < 0 else a
    layout = torch.channels_last
    s = s.to(dtype=dtype, memory_format=layout)
    if _pointwise(syn):  # a per-channel scale (identity shortcut): no convolution needed
        a = s * w.reshape(1, -1, 1, 1)
    else:
        a = F.conv2d(s, w, stride=tuple(syn.stride),
                     padding=tuple(syn.padding), groups=syn.groups)
    return wrap(a) if wraps else a


def _batch(s: torch.Tensor, dtype: torch.dtype, channels_last: bool = True) -> torch.Tensor:
    """Payloads ``(k, b, ...)`` as one batch ``(k * b, ...)`` of ``dtype``, channels-last if
    4-d and ``channels_last`` (a convolution's input; a dense float synapse reads (C, H, W)
    order), as :func:`_apply_synapse` computes on it: a view where the layout allows, else one
    pass."""
    if s.dim() != 5:
        return s.flatten(0, 1).to(dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = s.flatten(0, 1) if s.stride(0) == s.shape[1] * s.stride(1) else None
    if batch is not None and s.dtype == dtype and batch.is_contiguous(memory_format=layout):
        return batch  # all items of consecutive steps: a view
    out = torch.empty((s.shape[0] * s.shape[1], *s.shape[2:]), dtype=dtype, device=s.device,
                      memory_format=layout)
    out.unflatten(0, s.shape[:2]).copy_(s)
    return out


def _widest(dtypes) -> torch.dtype:
    return torch.float64 if torch.float64 in set(dtypes) else torch.float32


def _empty(shape: Sequence[int], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Empty tensor of ``shape``; a (T, B, C, H, W) one is laid out channels-last like conv
    outputs, so that copying them in and feeding the next convolution need no transpose."""
    if len(shape) != 5:
        return like.new_empty(shape, dtype=dtype)
    steps, batch, ch, h, w = shape
    return like.new_empty((steps, batch, h, w, ch), dtype=dtype).permute(0, 1, 4, 2, 3)


def _arrival(syn: Synapse) -> int:
    """The step at which ``syn`` delivers its source's step 0: one step of delay plus its own."""
    return 1 + syn.delay


def _strided_read(syn: Synapse, train: torch.Tensor) -> tuple[Synapse, torch.Tensor]:
    """``syn`` and what it reads of its source ``train`` (T, B, *shape): a 1x1 unpadded
    convolution with a stride reads every stride-th entry, so it runs at stride 1 on that
    subsample (a view; only those entries are converted for the convolution)."""
    if (isinstance(syn, Conv) and syn.weight.shape[2:] == (1, 1)
            and tuple(syn.padding) == (0, 0) and tuple(syn.stride) != (1, 1)):
        (sh, sw), syn = syn.stride, dataclasses.replace(syn, stride=(1, 1))
        return syn, train[..., ::sh, ::sw]
    return syn, train


def _steady(a: torch.Tensor, steps: int) -> torch.Tensor:
    """``a`` (b, ...) as every one of ``steps`` steps' entries: a broadcast view (k, b, ...)
    whose first dimension has stride 0 (the CPU kernels read one row for every step)."""
    return a.unsqueeze(0).expand(steps, *a.shape)


def _input_chunks(net: Network, name: str, trains: dict[str, torch.Tensor],
                  constant: set[str], items: int | None = None,
                  first: dict[str, int] | None = None, fused: Synapse | None = None):
    """:func:`synaptic_input` in chunks ``(first step, first item, a (k, b, ...))`` of about
    CHUNK_SIZE entries each, small enough to be summed and consumed from cache: blocks of
    ``items`` items (all when None), each in consecutive blocks of steps. ``first``: each
    train's first step with an event (0 where absent): a synapse delivers nothing before its
    :func:`_arrival` after it, and the steps before any synapse delivers are one chunk of zeros;
    a population whose one synapse has a constant (analog) source gets its output as one chunk;
    both are broadcast views (:func:`_steady`). ``fused``: a synapse left out (the kernels add
    it)."""
    first = first or {}
    steps, batch = trains[net.inputs_of(name)[0].source].shape[:2]

    def arrives(syn: Synapse) -> int:  # the first step it may deliver a nonzero entry
        silent = 0 if syn.source in constant else first.get(syn.source, 0)
        return min(steps, _arrival(syn) + silent)

    syns = sorted((_strided_read(syn, trains[syn.source]) for syn in net.inputs_of(name)
                   if syn is not fused), key=lambda read: arrives(read[0]))  # earliest first
    plans = [_plan(net, syn, s) for syn, s in syns]  # int8 weights packed once
    dtype = _widest(p.dtype for p in plans)
    shape = net.nodes[name].shape
    late = [arrives(syn) for syn, _ in syns]
    start = min(late)
    steady = len(syns) == 1 and syns[0][0].source in constant
    items = batch if items is None else max(1, min(items, batch))
    per = steps if steady else max(1, CHUNK_SIZE // max(1, items * int(np.prod(shape))))
    fixed = {}  # constant (analog) sources: the same output every step, computed once
    for b0 in range(0, batch, items):
        b1 = min(b0 + items, batch)
        if start:
            yield 0, b0, _steady(_empty((1, b1 - b0, *shape), syns[0][1], dtype)[0].zero_(),
                                 start)
        for t0 in range(start, steps, per):
            t1 = min(t0 + per, steps)
            total = None
            for i, ((syn, s), plan) in enumerate(zip(syns, plans, strict=True)):
                lo, arrival = min(max(t0, late[i]), t1), _arrival(syn)
                if syn.source in constant:
                    if i not in fixed:
                        fixed[i] = _apply_synapse(syn, s[0], plan).to(dtype)
                    a = _steady(fixed[i][b0:b1], t1 - lo)
                    if steady:
                        total = a
                        continue
                elif lo < t1:
                    x = _batch(s[lo - arrival:t1 - arrival, b0:b1],
                               torch.uint8 if plan.int8 is not None else plan.dtype,
                               isinstance(syn, Conv) or plan.int8 is not None)
                    a = _apply_synapse(syn, x, plan)
                    a = a.reshape(t1 - lo, b1 - b0, *a.shape[1:])
                if i == 0 and lo == t0 < t1 and syn.source not in constant and a.dtype == dtype:
                    total = a  # a new tensor: the sum starts in it
                elif i == 0:
                    total = _empty((t1 - t0, b1 - b0, *shape), s, dtype)
                    total[:lo - t0] = 0
                    if lo < t1:
                        total[lo - t0:] = a
                elif lo < t1:
                    total[lo - t0:] += a
            yield t0, b0, total


def synaptic_input(
    net: Network, name: str, trains: dict[str, torch.Tensor], constant: set[str],
    first: dict[str, int] | None = None
) -> torch.Tensor:
    """``a[t] = sum_e syn_e(p_src[t-1-d_e])`` for all t at once, 0 before a synapse's first
    arrival ``1 + d_e`` (one step of delay per synapse plus its own ``delay``). Float32 or
    float64; in int mode every entry is an exact integer. ``first`` as :func:`_input_chunks`'s."""
    chunks = [a for _, _, a in _input_chunks(net, name, trains, constant, first=first)]
    if len(chunks) == 1 and chunks[0].stride(0) != 0:
        return chunks[0]
    return torch.cat(chunks)  # broadcast views as tensors of their own


def _gain(a: torch.Tensor, a_exp: int) -> torch.Tensor:
    """Integer dendritic gain ``a * 2**(6 + a_exp)``, floor shift when negative (in place)."""
    shift = THRESHOLD_SHIFT + a_exp
    return a.__ilshift__(shift) if shift >= 0 else a.__irshift__(-shift)


def input_current(net: Network, node: IF | Readout, a: torch.Tensor) -> torch.Tensor:
    """What the population adds to v at each step, ``G(a[t]) + bias * [t >= t_start]``, for
    all t (a new tensor; int64 in int mode)."""
    exp = 0 if is_lif(net, node) else node.a_exp
    a = _gain(a.to(torch.int64), exp) if net.numeric == "int" else a.clone()
    a[node.t_start:] += _tensor(node.bias, a)
    return a


class _Current:
    """``input_current(net, node, a)[t]`` one step at a time, in a reused buffer, from ``a``'s
    chunks ``(first step, a[first:first + k])`` in order (see :func:`_input_chunks`).

    In int mode the buffer has ``a``'s float dtype: float32 holds every integer below 2**24
    exactly, and the gain (a power of two) and the floor shift stay exact; where ``a << s`` +
    bias reaches 2**24 and rounds, the state is beyond the 24-bit bound whatever the rounding,
    so after saturation it is exact again (and so is the count of saturated neuron-steps).
    """

    def __init__(self, net: Network, node: IF | Readout, chunks) -> None:
        self.chunks, self.node = iter(chunks), node
        self.int_mode = net.numeric == "int"
        self.start, _, self.a = next(self.chunks)
        self.x = torch.empty_like(self.a[0])
        self.bias = _tensor(node.bias, self.x)
        self.shift = THRESHOLD_SHIFT + (0 if is_lif(net, node) else node.a_exp)

    def __call__(self, t: int) -> torch.Tensor:
        while t >= self.start + len(self.a):
            self.start, _, self.a = next(self.chunks)
        x, a = self.x, self.a[t - self.start]
        if self.int_mode:
            torch.mul(a, 2.0**self.shift, out=x)
            if self.shift < 0:  # floor shift right
                x.floor_()
            if t >= self.node.t_start:
                x.add_(self.bias)
        elif t >= self.node.t_start:
            torch.add(a, self.bias, out=x)
        else:
            x.copy_(a)
        return x


def state_bounds(net: Network, node: IF | Readout) -> tuple[int, int] | None:
    """The range v saturates to (int mode), None in float mode."""
    if net.numeric != "int":
        return None
    return -(2 ** (node.state_bits - 1)), 2 ** (node.state_bits - 1) - 1


def _tensor(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), device=like.device).to(like.dtype)


def _saturate(v: torch.Tensor, bounds: tuple[int, int] | None,
              spare: torch.Tensor | None = None) -> int:
    """Clip ``v`` to ``bounds`` in place; return how many entries were outside (``spare``: a
    scratch tensor like ``v``)."""
    if bounds is None:
        return 0
    lo, hi = torch.aminmax(v)  # one pass; most steps need nothing more
    outside = 0
    wide = torch.float64 if v.numel() >= 2**24 and v.is_floating_point() else None
    spare = torch.empty_like(v) if spare is None else spare
    for beyond, compare, bound in ((lo < bounds[0], torch.lt, bounds[0]),
                                   (hi > bounds[1], torch.gt, bounds[1])):
        if beyond:  # count in v's dtype (a float compare-and-sum beats a bool one), exact
            outside += int(compare(v, bound, out=spare).sum(dtype=wide))
    if outside:
        v.clamp_(*bounds)
    return outside


def _spike_count(v: torch.Tensor, vth: torch.Tensor, burst: int, out: torch.Tensor
                 ) -> torch.Tensor:
    """``out = sum_n [v >= n * vth]`` for n = 1 .. ``burst`` (in out's dtype); returns ``out``."""
    torch.ge(v, vth, out=out)
    for k in range(2, burst + 1):
        out.add_(v.ge(vth * k))
    return out


def integrate_and_fire(node: IF, current: Callable[[int], torch.Tensor], steps: int,
                       out: torch.Tensor, bounds: tuple[int, int] | None) -> int:
    """Run the IF dynamics of :class:`~lavaconv.ir.network.IF` for ``steps`` steps on
    ``current(t)`` (what v receives at step t), writing the spikes s[t] (-burst .. burst)
    into ``out[t]`` (the payload not applied; written after ``current(t)`` is read); return how
    many neuron-steps saturated (int mode)."""
    first = current(0)
    v = torch.zeros_like(first) + _tensor(node.v_init, first)
    vth = _tensor(node.v_threshold, v)
    step = vth.item() if vth.dim() == 0 else None  # one threshold: v.sub_(s, alpha=vth)
    memory = torch.zeros_like(v) if node.reset == "snm" else None
    spare = torch.empty_like(v)
    saturated = 0
    for t in range(steps):
        v.add_(current(t))
        saturated += _saturate(v, bounds, spare)
        s = _spike_count(v, vth, node.burst, out[t])  # burst spikes (Li & Zeng 2022)
        if memory is not None:  # SNM eq. 9: negative spikes only up to the memory
            s.sub_(torch.minimum(_spike_count(-v, vth, node.burst, spare), memory.clamp(min=0)))
            memory.add_(s)  # SNM eq. 11
        if node.reset == "zero":  # reset to zero (Rueckauer eq. 4a)
            v.masked_fill_(s != 0, 0)
        elif step is not None:  # reset by subtraction (Rueckauer eq. 4b, SNM eq. 10)
            v.sub_(s, alpha=step)
        else:
            v.addcmul_(s, vth, value=-1)
    return saturated


def _potential(u: torch.Tensor, bounds: tuple[int, int] | None) -> tuple[torch.Tensor, int]:
    """v[t] of a population that never spikes, for all t, and the neuron-steps saturated."""
    v = torch.cumsum(u, dim=0)
    if bounds is None or (v.min() >= bounds[0] and v.max() <= bounds[1]):
        return v, 0
    state = torch.zeros_like(u[0])
    saturated = 0
    for t in range(u.shape[0]):
        saturated += _saturate(state.add_(u[t]), bounds)
        v[t] = state
    return v, saturated


def readout_scores(node: Readout, u: torch.Tensor, checkpoints: Sequence[int],
                   bounds: tuple[int, int] | None = None, mode: str | None = None,
                   seed: int = 0) -> tuple[dict[int, torch.Tensor], int]:
    """Score per class at each checkpoint, whose argmax is the class, for the readout mode
    (default ``node.mode``; see :class:`~lavaconv.ir.network.Readout`), from the current ``u``
    (T, B, n) of :func:`input_current`; and the neuron-steps saturated."""
    mode = mode or node.mode
    if mode == "count":
        spiking = IF(node.shape, np.zeros(()), node.v_threshold, "subtract")
        out = torch.empty_like(u)
        saturated = integrate_and_fire(spiking, u.__getitem__, len(u), out, bounds)
        counts = torch.cumsum(out, dim=0)
        return {t: counts[t - 1] for t in checkpoints}, saturated
    v, saturated = _potential(u, bounds)
    if mode == "potential":
        return {t: v[t - 1] for t in checkpoints}, saturated
    # spiking softmax (Rueckauer sec. 3.5): one class fires per step, P = softmax(v / vth)
    p = torch.softmax(v.to(torch.float64) / _tensor(node.v_threshold, v).to(torch.float64), -1)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.rand(v.shape[:-1], generator=gen, dtype=torch.float64).to(v.device)
    k = torch.searchsorted(torch.cumsum(p, -1), r.unsqueeze(-1)).clamp_(max=v.shape[-1] - 1)
    counts = torch.cumsum(F.one_hot(k.squeeze(-1), v.shape[-1]), dim=0)
    return {t: counts[t - 1] for t in checkpoints}, saturated


def maxpool_gate(node: MaxPool, s: torch.Tensor, bound: float | None = None) -> torch.Tensor:
    """Spiking max-pool of :class:`~lavaconv.ir.network.MaxPool`: rate-gated (Rueckauer sec.
    3.6: pass the payload of the input with the largest payload sum so far in each window;
    ties go to the first in row-major window order, padding never wins) or ``running`` (the
    increase of the window's largest payload sum). ``bound`` is the largest |payload|
    (scanned when None)."""
    steps = s.shape[0]
    bound = float(s.abs().max()) if bound is None else bound
    exact32 = bound * steps < 2**24  # then every running sum is exact in float32
    dtype = torch.float32 if exact32 else torch.float64
    ho, wo = node.shape[1:]
    if node.mode == "running":  # sums are exact (exact32, or float64), so are their maxima
        sums = torch.cumsum(s.to(dtype), 0).flatten(0, 1)
        top = F.max_pool2d(sums, node.kernel, node.stride, node.padding)  # pads with -inf
        top = top.reshape(steps, *s.shape[1:3], ho, wo)
        return torch.diff(top, dim=0, prepend=torch.zeros_like(top[:1])).to(s.dtype)
    counts = torch.zeros_like(s[0], dtype=dtype)
    out = s.new_empty((steps, *s.shape[1:3], ho, wo))
    for t in range(steps):
        counts += s[t]
        # max-pool's argmax keeps the first of equal maxima, its padding never wins
        _, index = F.max_pool2d(counts, node.kernel, node.stride, node.padding,
                                return_indices=True)
        torch.gather(s[t].flatten(-2), -1, index.flatten(-2), out=out[t].flatten(-2))
    return out


def _last_uses(net: Network) -> dict[str, str]:
    """Source node → the last node (in order) that reads it."""
    order = {name: i for i, name in enumerate(net.nodes)}
    uses = [(s.source, s.target) for s in net.synapses]
    uses += [(n.source, name) for name, n in net.nodes.items() if isinstance(n, MaxPool)]
    last: dict[str, str] = {}
    for src, dst in uses:
        if src not in last or order[dst] > order[last[src]]:
            last[src] = dst
    return last


def _exact_float32(fn):
    """Run ``fn`` with cuDNN's TF32 convolutions off: they round float32 operands to 10
    mantissa bits on a GPU, and the integer mode relies on exact float32 integer sums."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            return fn(*args, **kwargs)

    return run


@_exact_float32
def simulate(
    net: Network,
    payload: torch.Tensor,
    checkpoints: Sequence[int] | None = None,
    *,
    seed: int = 0,
    probe: Probe | None = None,
    stop_after: str | None = None,
    counts_at: bool = False,
) -> SimResult:
    """Run ``net`` on a payload ``(T, B, *input_shape)`` from :func:`encode_input`.

    ``seed`` drives the spiking-softmax readout; ``probe`` sees every IF population's current
    and payload train; ``stop_after`` ends the run after that node (no readout scores then);
    ``counts_at`` keeps every neuron's spike events up to each checkpoint.
    """
    if net.is_sigma_delta:
        from lavaconv.sim import sigma_delta
        return sigma_delta.simulate(net, payload, checkpoints, counts_at=counts_at)
    steps = payload.shape[0]
    checkpoints = sorted(set(checkpoints or [steps]))
    if checkpoints[-1] > steps or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must lie in [1, {steps}], got {checkpoints}")
    last_use = _last_uses(net)
    inp = net.nodes[net.input_name]
    trains: dict[str, torch.Tensor] = {net.input_name: payload}
    constant = {net.input_name} if inp.encoding == "analog" else set()
    result = SimResult({}, {}, {t: {} for t in checkpoints}, {},
                       counts_at={t: {} for t in checkpoints} if counts_at else None)
    first: dict[str, int] = {}  # each train's first step with an event
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            continue
        if isinstance(node, MaxPool):
            trains[name] = maxpool_gate(node, trains[node.source],
                                        net.max_payload(node.source))
            tally = _count(trains[name], checkpoints, not net.is_binary(name))
            _record(result, name, trains[name], checkpoints, net.numeric, tally)
            first[name] = _first_event(tally)
        elif isinstance(node, Readout):
            a = synaptic_input(net, name, trains, constant, first)
            u = input_current(net, node, a)
            if is_lif(net, node):
                result.readout, result.saturated[name] = _lif_scores(node, a, checkpoints)
            else:
                result.readout, result.saturated[name] = readout_scores(
                    node, u, checkpoints, state_bounds(net, node), seed=seed)
            result.readout_input = u
            del a
        else:
            trains[name] = _fire(net, name, trains, constant, first, result, checkpoints, probe)
        for src in [s for s, last in last_use.items() if last == name and s in trains]:
            del trains[src]
        if name == stop_after:
            break
    return result


def _fire(net: Network, name: str, trains: dict[str, torch.Tensor], constant: set[str],
          first: dict[str, int], result: SimResult, checkpoints: Sequence[int],
          probe: Probe | None) -> torch.Tensor:
    """Run IF population ``name`` on its synaptic input, chunk by chunk; record its activity
    (and its first step with an event in ``first``); return the payload train it sends
    (float32; uint8 where binary, on the CPU kernels)."""
    node = net.nodes[name]
    source = trains[net.inputs_of(name)[0].source]
    steps, batch = source.shape[:2]
    cpu = source.device.type == "cpu" and KERNELS  # binary trains as bytes there
    train = _empty((steps, batch, *node.shape), source,
                   torch.uint8 if cpu and net.is_binary(name) else torch.float32)
    shortcut = _Shortcut.of(net, name, trains, train) if cpu and probe is None else None
    chunks = _input_chunks(net, name, trains, constant,
                           max(1, STATE_SIZE // int(np.prod(node.shape))) if cpu else None,
                           first, shortcut.synapse if shortcut else None)
    if probe is not None:  # the probe needs the whole current
        a = synaptic_input(net, name, trains, constant, first)
        u, chunks = input_current(net, node, a), [(0, 0, a)]
    if cpu:
        tally = _new_tally(train, checkpoints)
        result.saturated[name] = _fire_cpu(net, node, chunks, train, tally, shortcut)
    else:
        if is_lif(net, node):
            result.saturated[name] = _lif_fire(node, chunks, steps, train)
        else:
            result.saturated[name] = integrate_and_fire(node, _Current(net, node, chunks), steps,
                                                        train, state_bounds(net, node))
        tally = _count(train, checkpoints, not net.is_binary(name))
    _record(result, name, train, checkpoints, net.numeric, tally)
    first[name] = _first_event(tally)
    if not np.all(node.payload == 1):
        train.mul_(_tensor(node.payload, train))
    if probe is not None:
        probe(name, u, train.float())
    return train


class _Shortcut(NamedTuple):
    """An identity shortcut that the CPU kernels add to a population's other sums themselves
    (:func:`lavaconv.sim.kernels._sums`: no pass over the sums): ``synapse``, its source
    ``train``, its per-channel ``scale`` (C,) in the sums' dtype and its :func:`_arrival`."""

    synapse: Synapse
    train: torch.Tensor
    scale: torch.Tensor
    arrival: int

    @staticmethod
    def of(net: Network, name: str, trains: dict[str, torch.Tensor],
           out: torch.Tensor) -> _Shortcut | None:
        """The first synapse into population ``name``, beside others, that scales a byte train
        laid out like the population's train ``out`` (:func:`_scales_bytes`), or None."""
        syns = net.inputs_of(name)
        for syn in syns if len(syns) > 1 else ():
            s = trains[syn.source]
            plan = _plan(net, syn, s)
            if (_scales_bytes(syn, plan, s) and s.shape == out.shape
                    and kernels.memory_order(s) == kernels.memory_order(out)):
                dtype = _widest(_float_plan(net, o).dtype for o in syns if o is not syn)
                return _Shortcut(syn, s, plan.weight.reshape(-1).to(dtype), _arrival(syn))
        return None


def _fire_cpu(net: Network, node: IF, chunks, out: torch.Tensor, tally: tuple,
              shortcut: _Shortcut | None = None) -> int:
    """:func:`integrate_and_fire` or the stock LIF (:func:`_lif_fire`) on the CPU kernels of
    :mod:`lavaconv.sim.kernels`, a chunk (a block of items and of steps) per call, plus the
    ``shortcut`` (the kernels add it); spikes into ``out``, their
    events into ``tally`` (:func:`_new_tally`); returns the neuron-steps saturated (wrapped or
    clipped: stock LIF)."""
    order = kernels.memory_order(out)
    spikes = kernels.flat(out, order)
    if not np.shares_memory(spikes, out.numpy()):
        raise AssertionError("the spike train is not laid out densely")
    integer = net.numeric == "int"

    def param(p, dtype: torch.dtype = torch.int64 if integer else torch.float32) -> np.ndarray:
        return kernels.per_neuron(torch.as_tensor(np.asarray(p)), node.shape, order, dtype)

    batch, size = out.shape[1], int(np.prod(node.shape))
    added = None if shortcut is None else (  # as kernels._sums reads it
        kernels.flat(shortcut.train, order),
        param(shortcut.scale.reshape(-1, *[1] * (len(node.shape) - 1)), shortcut.scale.dtype),
        shortcut.arrival)
    v = np.tile(param(node.v_init), batch)
    bias, vth = param(node.bias), param(node.v_threshold)
    if is_lif(net, node):
        u = np.stack([v, -v]).astype(np.int32)  # the floor neuron's u is -u
        v, floor = np.zeros_like(u), np.zeros(len(v), dtype=np.uint8) if node.floor else None
        mirrored = np.ones(batch, dtype=np.bool_)
        return sum(kernels.lif_chunk(_rows(a, order), len(a), t0, b0 * size, node.t_start,
                                     bias, vth, u, v, floor, mirrored, spikes, tally, added)
                   for t0, b0, a in chunks)
    memory, reset = np.zeros(len(v), dtype=np.int64), kernels.RESETS[node.reset]
    return sum(kernels.if_chunk(_rows(a, order), len(a), t0, b0 * size, node.t_start,
                                THRESHOLD_SHIFT + node.a_exp, bias, vth, v, memory,
                                state_bounds(net, node), node.burst, reset, spikes, tally,
                                added)
               for t0, b0, a in chunks)


def _rows(a: torch.Tensor, order: Sequence[int]) -> np.ndarray:
    """A chunk (k, b, ...) as the kernels read it: :func:`kernels.flat`, one row where every
    step's entries are the same (a broadcast view, :func:`_steady`)."""
    return kernels.flat(a[:1] if a.stride(0) == 0 else a, order)


def _lif_fire(node: IF, chunks, steps: int, out: torch.Tensor) -> int:
    """The stock LIF soft-reset population (:func:`lavaconv.sim.lif.lif_integrate_and_fire`)
    on its synaptic input ``chunks`` (see :func:`_input_chunks`); spikes into ``out``."""
    parts = iter(chunks)
    start, _, a = next(parts)
    u_init = torch.zeros_like(a[0], dtype=torch.float64)  # exact integers: u wraps
    bias, theta = _tensor(node.bias, u_init), _tensor(node.v_threshold, u_init)
    u_init += _tensor(node.v_init, u_init)

    def current(t: int) -> torch.Tensor:
        nonlocal start, a
        while t >= start + len(a):
            start, _, a = next(parts)
        x = torch.mul(a[t - start], 2**THRESHOLD_SHIFT, out=torch.empty_like(u_init))
        return x.add_(bias) if t >= node.t_start else x

    return lif.lif_integrate_and_fire(current, steps, theta, u_init, out, node.floor)


def _lif_scores(node: Readout, a: torch.Tensor,
                checkpoints: Sequence[int]) -> tuple[dict[int, torch.Tensor], int]:
    """Potential of a stock LIF readout (:func:`lavaconv.sim.lif.lif_readout`) at each
    checkpoint."""
    x = _gain(a.to(torch.int64), 0)
    v, clipped = lif.lif_readout(x, _tensor(node.bias, x), node.t_start)
    return {t: v[t - 1] for t in checkpoints}, clipped


def _first_event(tally: tuple) -> int:
    """The first step with an event in ``tally`` (:func:`_new_tally`); the step count if none."""
    active = np.flatnonzero(tally[1])
    return int(active[0]) if len(active) else len(tally[1])


def _new_tally(train: torch.Tensor, checkpoints: Sequence[int]) -> tuple:
    """Empty event sums for ``train`` (T, B, ...) and ``checkpoints``, as the kernels fill them:
    (interval of each step (T,), events per step (T,), events per neuron in each interval
    (C, B * M) in the train's memory order); the intervals end at the checkpoints and T."""
    ends = sorted({*checkpoints, len(train)})
    interval = np.searchsorted(ends, np.arange(len(train)), side="right")
    return (interval, np.zeros(len(train)),
            np.zeros((len(ends), train[0].numel()), dtype=np.float32))


def _count(spikes: torch.Tensor, checkpoints: Sequence[int], graded: bool) -> tuple:
    """:func:`_new_tally` of a train's spike events (positive, negative or bursts: ``graded``),
    its nonzero entries, counted from the train (float32 sums of fewer than 2**24 ones are
    exact), running over the neurons in memory order."""
    flat = spikes.permute(kernels.memory_order(spikes)).reshape(len(spikes), -1)
    if flat.dtype == torch.uint8 and flat.device.type == "cpu":  # the kernels' binary trains
        tally = _new_tally(spikes, checkpoints)
        kernels.count_events(flat.numpy(), tally)
        return tally
    events = torch.ne(flat, 0, out=torch.empty_like(flat)) if graded else flat
    wide = events.shape[1] >= 2**24
    per_step = events.sum(1, dtype=torch.float64 if wide else torch.float32)
    ends = sorted({*checkpoints, len(spikes)})
    sums = torch.stack([events[start:t].sum(dim=0, dtype=torch.float32)
                        for start, t in zip([0, *ends[:-1]], ends, strict=True)])
    return None, per_step.double().cpu().numpy(), sums


def _record(result: SimResult, name: str, spikes: torch.Tensor, checkpoints: Sequence[int],
            numeric: str, tally: tuple) -> None:
    """Spike events of population ``name`` from its ``tally``: in total up to each checkpoint,
    and per neuron there (``counts_at``) and over the run."""
    _, per_step, sums = tally
    order = kernels.memory_order(spikes)
    per_step = np.cumsum(per_step)
    sums = torch.cumsum(torch.as_tensor(sums, device=spikes.device), dim=0)
    dtype = torch.int64 if numeric == "int" else torch.float32
    shape = [spikes.shape[d] for d in order[1:]]
    back = [order[1:].index(d) for d in range(1, spikes.dim())]  # memory order -> logical
    ends = sorted({*checkpoints, len(spikes)})
    for t, total in zip(ends, sums, strict=True):
        counts = total.view(shape).permute(back).to(dtype)
        if t in checkpoints:
            result.spikes_at[t][name] = float(per_step[t - 1])
            if result.counts_at is not None:
                result.counts_at[t][name] = counts
    result.spike_counts[name] = counts
