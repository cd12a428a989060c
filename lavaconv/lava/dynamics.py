"""One timestep of each Lava process of the graph, as plain array functions.

lavaconv's own process models (``procs/models.py``) and the fused whole-network model
(:mod:`lavaconv.lava.fused`) both call these, so a neuron has one implementation. The synapse
kernels reproduce Lava's stock ``fixed_pt`` Dense, Sparse and Conv models
(``lava/proc/dense/models.py`` ``PyDenseModelBitAcc``, ``lava/proc/sparse/models.py``
``PySparseModelBitAcc``, ``lava/proc/conv/models.py`` ``PyConvModelFixed``) bit for bit wherever
those cannot overflow their int32 sums (checked per synapse), vectorised: torch ``conv2d``
instead of a scipy ``convolve2d`` per channel pair, the active inputs' weight columns summed
instead of a matrix product. :class:`LifBitAcc` and :func:`ring_buffer_at` are the stock LIF's
``PyLifModelBitAcc`` and RingBuffer's ``PySendModelFixed`` (the stock graph,
:mod:`lavaconv.lava.stock`). Arrays use Lava's layout: maps are ``(W, H, C)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.process import Dense as LavaDense
from lava.proc.lif.process import LIF
from lava.proc.sparse.process import Sparse
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights
from scipy.sparse import csr_matrix, issparse

from lavaconv.errors import LavaconvError
from lavaconv.ir.fixedpoint import THRESHOLD_SHIFT, wrap

EXACT_SUM = 2**31  # stock models sum in int32 (Dense) or cast to int32 (Conv): exact below this


DECAY_UNITY = 2**12  # LIF's du and dv are fractions of 4096 (12 bits)
UV_HALF = 2**23  # LIF's u and v hold 24-bit values


def initial(proc, var: str) -> np.ndarray:
    """A Var's initial value at its full shape."""
    v = getattr(proc, var)
    return np.broadcast_to(np.asarray(v.init), v.shape)


def local_step(time_step: int, steps: int) -> tuple[int, int]:
    """``(item, step within the item)`` of Lava's ``time_step`` (from 1); step ``steps`` is the
    reset step (docs/design.md section 4)."""
    return divmod(time_step - 1, steps + 1)


def payload_at(payload: np.ndarray, item: int, t: int) -> np.ndarray:
    """What the spike source sends: ``payload[item, t]``, zeros in reset steps and after."""
    items, steps = payload.shape[:2]
    if t < steps and item < items:
        return payload[item, t]
    return np.zeros(payload.shape[2:], payload.dtype)


def fixed_gain(a: np.ndarray, a_exp: int) -> np.ndarray:
    """``u = a << (6 + a_exp)``, a flooring right shift when the shift is negative (in place
    where ``a`` is int64)."""
    shift = THRESHOLD_SHIFT + a_exp
    a = np.asarray(a, dtype=np.int64)
    if shift >= 0:
        return np.left_shift(a, shift, out=a)
    return np.right_shift(a, -shift, out=a)


def integrate(v: np.ndarray, u: np.ndarray, bias: np.ndarray, bias_on: bool, live: bool,
              state_bits: int | None, rest: np.ndarray | int = 0) -> None:
    """In place (``u`` is overwritten): ``v = sat(v + u + bias * bias_on)``, or ``v = rest``
    (the item's initial potential) in the reset step (not ``live``); ``state_bits`` None: no
    saturation (floating point)."""
    if not live:
        v[:] = rest
        return
    total = np.add(v, u, out=u)
    if bias_on:
        total += bias
    if state_bits is not None:
        half = 2 ** (state_bits - 1)
        np.clip(total, -half, half - 1, out=total)
    v[:] = total


def spike_count(v: np.ndarray, vth: np.ndarray, burst: int) -> np.ndarray:
    """How many thresholds ``v`` has reached, up to ``burst``: ``sum_n [v >= n * vth]``
    (comparisons, so exact in integer and float arithmetic alike)."""
    n = (v >= vth).astype(np.int8)
    for k in range(2, burst + 1):
        n += v >= k * vth
    return n


def fire(v: np.ndarray, vth: np.ndarray, count: np.ndarray, live: bool, reset: str,
         memory: np.ndarray | None = None, burst: int = 1) -> np.ndarray:
    """In place: ``s = +n`` where ``v >= n * vth`` (n up to ``burst``: burst spikes, Li & Zeng
    2022), and with a ``memory`` (reset 'snm', SNM eq. 9) ``s = -n`` where ``v <= -n * vth``,
    n at most the memory; reset by subtraction (``v -= vth * s``, Rueckauer eq. 4b, SNM eq. 10)
    or to zero (eq. 4a); ``memory += s`` (SNM eq. 11); count the item's spike events (a burst
    is one event). The reset step sends nothing and zeroes the memory and the count. Returns
    s (int8)."""
    s = spike_count(v, vth, burst)
    if memory is not None:
        s -= np.minimum(spike_count(-v, vth, burst), np.maximum(memory, 0)).astype(np.int8)
    if not live:
        s[:] = 0
        count[:] = 0
        if memory is not None:
            memory[:] = 0
    if reset == "zero":
        v[s != 0] = 0
    else:
        v -= vth * s
    if live:
        if memory is not None:
            memory += s
        count += s != 0
    return s


def ring_buffer_at(data: np.ndarray, time_step: int) -> np.ndarray:
    """What a stock ``RingBuffer`` (``PySendModelFixed``) sends at Lava's ``time_step`` (from
    1): column ``(time_step - 1) mod n`` of its ``data`` (the last axis, of length n, is time)."""
    return data[..., (time_step - 1) % data.shape[-1]]


def _decay(x: np.ndarray, keep: int) -> np.ndarray:
    """``sgn(x) * ((|x| * keep) >> 12)`` computed in int64, cast back to int32 (as LIF does)."""
    d = x.astype(np.int64) * keep
    return (np.sign(d) * np.right_shift(np.abs(d), 12)).astype(np.int32)


class LifBitAcc:
    """One step of Lava's stock ``LIF`` as ``PyLifModelBitAcc`` computes it, from the process's
    ``du``, ``dv`` (12 bits; ``ds_offset = 1``), ``bias_mant``, ``bias_exp`` and ``vth``, in the
    model's own dtypes (u, v and the summed ``a_in`` int32; decays in int64), so that it wraps
    wherever the model wraps::

        u = wrap24(sgn(u) ((|u| (4096 - du - 1)) >> 12) + (a_in << 6))   (> 2**23: -2**24,
                                                                           <= -2**23: +2**24)
        v = clip(sgn(v) ((|v| (4096 - dv)) >> 12) + u + (bias_mant << bias_exp), +-(2**23 - 1))
        s = v > (vth << 6);  v = 0 where s
    """

    def __init__(self, proc: LIF) -> None:
        self.keep_u = DECAY_UNITY - (int(np.ravel(proc.du.init)[0]) + 1)
        self.keep_v = DECAY_UNITY - int(np.ravel(proc.dv.init)[0])
        mant = initial(proc, "bias_mant").astype(np.int16).astype(np.int32)
        exp = initial(proc, "bias_exp").astype(np.int16)
        self.bias = np.where(exp >= 0, np.left_shift(mant, exp), np.right_shift(mant, -exp))
        self.vth = np.left_shift(int(np.ravel(proc.vth.init)[0]), 6)

    def __call__(self, u: np.ndarray, v: np.ndarray, a_in: np.ndarray) -> np.ndarray:
        """In place on ``u`` and ``v`` (int32); returns the spikes (bool)."""
        decayed = _decay(u, self.keep_u)
        decayed += np.left_shift(a_in.astype(np.int32), 6)
        u[:] = np.where(decayed > UV_HALF, decayed - 2 * UV_HALF,
                        np.where(decayed <= -UV_HALF, decayed + 2 * UV_HALF, decayed))
        np.clip(_decay(v, self.keep_v) + u + self.bias, -UV_HALF + 1, UV_HALF - 1, out=v)
        s = v > self.vth
        v[s] = 0
        return s


class DelayLine:
    """What one :class:`Delay` process sends: ``out[t] = s[t - delay]`` within an item, zeros
    for ``t < delay`` (the buffer is cleared in the reset step, which sends nothing)."""

    def __init__(self, delay: int) -> None:
        self.delay = delay
        self.buffer: np.ndarray | None = None  # (delay, *shape), in the dtype s arrives in

    def __call__(self, s: np.ndarray, t: int, live: bool) -> np.ndarray:
        if self.buffer is None:
            self.buffer = np.zeros((self.delay, *s.shape), s.dtype)
        if not live:
            self.buffer[:] = 0
            return np.zeros_like(s)
        slot = self.buffer[t % self.delay]
        out = slot.copy()
        slot[...] = s
        return out


class Gate:
    """Spiking max-pool of one :class:`MaxPoolGate`, from its parameters (``in_shape``,
    ``out_shape``, ``kernel``, ``stride``, ``padding``: Lava's (W, H) order; ``mode``).

    ``gate`` (Rueckauer et al. 2017, sec. 3.6): each window passes what its candidate with the
    largest running sum ``c`` of received payloads sent (binary, graded or signed), ties to the
    first in torch's row-major window order: candidates are visited in that order and only a
    strictly larger ``c`` takes over. ``running``: each window sends the increase of its
    largest ``c``. Padding cells hold ``c = -inf`` and never win.
    """

    def __init__(self, params) -> None:
        (kw, kh), (sw, sh), (pw, ph) = (tuple(params[k]) for k in ("kernel", "stride", "padding"))
        self.running = params["mode"] == "running"
        width, height, channels = params["in_shape"]
        w_out, h_out, _ = params["out_shape"]
        self.padded = (width + 2 * pw, height + 2 * ph, channels)
        self.c = np.full(self.padded, -np.inf)
        self.s: np.ndarray | None = None  # the padded payload, in the dtype it arrives in
        self.inside = (slice(pw, pw + width), slice(ph, ph + height))
        self.windows = [(slice(j, j + sw * (w_out - 1) + 1, sw),
                         slice(i, i + sh * (h_out - 1) + 1, sh))
                        for i in range(kh) for j in range(kw)]

    def __call__(self, c: np.ndarray, count: np.ndarray, s: np.ndarray,
                 live: bool) -> np.ndarray:
        """In place on the sums ``c`` and the counts ``count``: ``c += s``, the windows'
        outputs; both are zeroed in the reset step, which sends nothing."""
        if self.running:
            before = self._window_max(c)
        if live:
            c += s
        else:
            c[:] = 0
        out = (self._window_max(c) - before).astype(s.dtype) if self.running else self._gated(c, s)
        if live:
            count += out != 0
        else:
            out[:] = 0
            count[:] = 0
        return out

    def _gated(self, c: np.ndarray, s: np.ndarray) -> np.ndarray:
        """What each window's first candidate with the largest ``c`` sent."""
        if self.s is None or self.s.dtype != s.dtype:
            self.s = np.zeros(self.padded, s.dtype)
        self.c[self.inside] = c
        self.s[self.inside] = s
        first = self.windows[0]
        best, out = self.c[first].copy(), self.s[first].copy()
        for window in self.windows[1:]:
            better = self.c[window] > best
            np.copyto(best, self.c[window], where=better)
            np.copyto(out, self.s[window], where=better)
        return out

    def _window_max(self, c: np.ndarray) -> np.ndarray:
        """The largest ``c`` of every window (padding never wins)."""
        self.c[self.inside] = c
        best = self.c[self.windows[0]].copy()
        for window in self.windows[1:]:
            np.maximum(best, self.c[window], out=best)
        return best


def _sum_bound(proc, weights: np.ndarray, message_bits: int, shift: int = 0) -> int:
    """Largest possible |synaptic sum| (times ``2**shift``); refuse one that would leave the
    range where Lava's stock model is exact."""
    s_max = 1 if message_bits == 0 else 2 ** (message_bits - 1)
    flat = weights.astype(np.int64).reshape(weights.shape[0], -1)
    rows = np.asarray(abs(flat).sum(axis=1)).ravel()  # a dense or a CSR matrix
    bound = int(rows.max(initial=0)) * s_max << max(shift, 0)
    if bound >= EXACT_SUM:
        raise LavaconvError(f"synapse {proc.name}: synaptic sums may reach {bound:.3g} >= 2**31, "
                            "where Lava's stock model overflows; run Lava with fast=False")
    return bound


class Kernel:
    """A synapse's step: its output for what its source sent. ``num_message_bits = 0`` reads
    the input as binary spikes. A graded input that repeats (an analog payload is the same every
    step of an item) gives the output it gave before, computed once."""

    message_bits: int

    def __init__(self) -> None:
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, s: np.ndarray) -> np.ndarray:
        if self.message_bits == 0:
            return self.compute(s != 0)
        if self.last is None or not np.array_equal(self.last[0], s):
            self.last = (s.copy(), self.compute(s))
        return self.last[1]

    def compute(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DenseKernel(Kernel):
    """Lava's ``PyDenseModelBitAcc`` and ``PySparseModelBitAcc`` (the same arithmetic on a
    dense or a CSR matrix): weights clipped to 8 bits and truncated to ``num_weight_bits``
    once, ``a = (W @ s) << weight_exp`` (flooring shift when negative)."""

    def __init__(self, proc: LavaDense | Sparse) -> None:
        super().__init__()
        params = proc.proc_params
        weights = proc.weights.init
        weights = csr_matrix(weights) if issparse(weights) else np.asarray(weights)
        sign_mode = params.get("sign_mode") or determine_sign_mode(weights)
        weights = clip_weights(weights, sign_mode, num_bits=8)
        weights = truncate_weights(weights, sign_mode, params.get("num_weight_bits", 8))
        self.message_bits = int(np.asarray(proc.num_message_bits.init).item())
        self.weight_exp = int(params.get("weight_exp", 0))
        _sum_bound(proc, weights, self.message_bits, self.weight_exp)  # int32 never wraps
        # Sparse: an int64 CSR product (exact); Dense: see compute
        self.matrix = csr_matrix(weights, dtype=np.int64) if issparse(weights) else None
        if self.matrix is None:
            self.columns = np.ascontiguousarray(weights.T, dtype=np.int64)  # one row per input
            self.graded = torch.from_numpy(weights.astype(np.float64))  # exact below 2**53

    def compute(self, s: np.ndarray) -> np.ndarray:
        if self.matrix is not None:
            a = self.matrix @ s.ravel().astype(np.int64)
        elif self.message_bits > 0:  # graded payload (numpy's multithreaded BLAS is avoided)
            a = torch.mv(self.graded, torch.from_numpy(s.ravel().astype(np.float64)))
            a = a.numpy().astype(np.int64)  # integral already
        else:  # binary spikes: the sum of the active inputs' weights, as the stock model's
            a = self.columns[np.flatnonzero(s)].sum(axis=0)
        return a << self.weight_exp if self.weight_exp > 0 else a >> -self.weight_exp


class ConvKernel(Kernel):
    """Lava's ``PyConvModelFixed``: a true convolution in ``(W, H)`` (weights ``(C_out, kW, kH,
    C_in / groups)``), then wrapped to 24 bits; ``weight_exp`` and ``num_weight_bits`` are ignored
    there and here."""

    def __init__(self, proc: LavaConv) -> None:
        super().__init__()

        def value(var) -> tuple[int, ...]:
            return tuple(int(x) for x in np.ravel(var.init))

        weight = np.asarray(proc.weight.init)
        self.message_bits = int(np.asarray(proc.num_message_bits.init).item())
        bound = _sum_bound(proc, weight, self.message_bits)
        self.wraps = bound >= 2**23
        # integer sums are exact in float32 below 2**24 in any order: torch's CPU conv2d sums
        # products directly or by im2col-GEMM, never by Winograd or FFT transforms
        self.dtype = np.float32 if bound < 2**24 else np.float64
        # the correlation kernel (C_out, C_in / g, kW, kH) over (1, C, W, H), both stored
        # channels-last, which is Lava's (W, H, C) order: flip, no copy of the maps
        flipped = np.ascontiguousarray(weight[:, ::-1, ::-1, :], dtype=self.dtype)
        self.kernel = torch.from_numpy(flipped).permute(0, 3, 1, 2)
        self.stride, self.padding = value(proc.stride), value(proc.padding)
        self.dilation, self.groups = value(proc.dilation), value(proc.groups)[0]

    def compute(self, s: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(s.astype(self.dtype)).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = F.conv2d(x, self.kernel, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=self.groups)
        a = y[0].permute(1, 2, 0).numpy().astype(np.int64)  # integral already, (W, H, C)
        return wrap(a) if self.wraps else a


def count_words(counts: int, steps: int) -> tuple[int, int, int]:
    """How :func:`pack_counts` lays ``counts`` spike counts of at most ``steps`` out: (bits a
    count, counts a word, words)."""
    bits = max(1, int(steps).bit_length())
    per = 52 // bits  # a word below 2**52: exact as Lava's float64 messages carry it
    return bits, per, -(-int(counts) // per)


def pack_counts(counts: np.ndarray, steps: int) -> np.ndarray:
    """Spike counts (each at most ``steps``) packed several to an int64 word: Lava's ``get`` of
    a Var sends one message per element (tens of microseconds each: over a second for a
    ResNet's 60,000 neurons), the packed counts 6 to 52 times fewer."""
    bits, per, words = count_words(len(counts), steps)
    padded = np.zeros(words * per, np.int64)
    padded[:len(counts)] = counts
    return (padded.reshape(words, per) << (np.arange(per) * bits)).sum(axis=1)


def unpack_counts(words: np.ndarray, counts: int, steps: int) -> np.ndarray:
    """The ``counts`` spike counts :func:`pack_counts` packed (from Lava's float64 values)."""
    bits, per, _ = count_words(counts, steps)
    fields = np.rint(np.asarray(words)).astype(np.int64).reshape(-1, 1) >> (np.arange(per) * bits)
    return (fields & ((1 << bits) - 1)).reshape(-1)[:counts]


def unpack_shaped(words: np.ndarray, shapes: list[tuple[int, ...]], steps: int
                  ) -> list[np.ndarray]:
    """The packed spike counts of several processes, one array of each ``shapes`` entry."""
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.split(unpack_counts(words, sum(sizes), steps), np.cumsum(sizes)[:-1])
    return [x.reshape(s) for x, s in zip(flat, shapes, strict=True)]
