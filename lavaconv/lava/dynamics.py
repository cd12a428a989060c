"""One timestep of each Lava process of the graph, as plain array functions.

lavaconv's own process models (``procs/models.py``) and the fused whole-network model
(:mod:`lavaconv.lava.fused`) both call these, so a neuron has one implementation. The synapse
kernels reproduce Lava's stock ``fixed_pt`` Dense and Conv models (``lava/proc/dense/models.py``
``PyDenseModelBitAcc``, ``lava/proc/conv/models.py`` ``PyConvModelFixed``) bit for bit, including
the int32 message channel a synapse sends on, vectorised (torch ``conv2d`` instead of a scipy
``convolve2d`` per channel pair). Arrays use Lava's layout: maps are ``(W, H, C)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.process import Dense as LavaDense
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

from lavaconv.errors import LavaconvError

EXACT_SUM = 2**31  # stock models sum in int32 (Dense) or cast to int32 (Conv): exact below this


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
    """``u = a << (6 + a_exp)``, a flooring right shift when the shift is negative."""
    shift = 6 + a_exp
    a = np.asarray(a, dtype=np.int64)
    return np.left_shift(a, shift) if shift >= 0 else np.right_shift(a, -shift)


def integrate(v: np.ndarray, u: np.ndarray, bias: np.ndarray, bias_on: bool, live: bool,
              state_bits: int | None, rest: np.ndarray | int = 0) -> None:
    """In place: ``v = sat(v + u + bias * bias_on)``, or ``v = rest`` (the item's initial
    potential) in the reset step (not ``live``); ``state_bits`` None: no saturation (float)."""
    if not live:
        v[:] = rest
        return
    total = v + u
    if bias_on:
        total += bias
    if state_bits is not None:
        half = 2 ** (state_bits - 1)
        np.clip(total, -half, half - 1, out=total)
    v[:] = total


def fire(v: np.ndarray, vth: np.ndarray, count: np.ndarray, live: bool,
         reset: str) -> np.ndarray:
    """In place: spike where ``v >= vth``, reset by subtraction or to zero, count the spikes of
    the item (zeroed in the reset step); returns the spikes."""
    s = v >= vth
    if not live:
        s[:] = False
        count[:] = 0
    if reset == "subtract":
        np.subtract(v, vth, out=v, where=s)
    else:
        v[s] = 0
    if live:
        count += s
    return s


class Gate:
    """Rate-gated spiking max-pool (Rueckauer et al. 2017, sec. 3.6) of one
    :class:`MaxPoolGate`, from its parameters (``in_shape``, ``out_shape``, ``kernel``, ``stride``,
    ``padding``; Lava's (W, H) order). Each window's candidates are in torch's row-major order
    (ties: first); the gather index of a padding cell points one past the input (never wins)."""

    def __init__(self, params) -> None:
        (kw, kh), (sw, sh), (pw, ph) = (tuple(params[k]) for k in ("kernel", "stride", "padding"))
        width, height, channels = params["in_shape"]
        w_out, h_out, _ = params["out_shape"]
        outside = width * height * channels
        candidates = []
        for i in range(kh):
            for j in range(kw):
                x = np.arange(w_out)[:, None] * sw + j - pw
                y = np.arange(h_out)[None, :] * sh + i - ph
                inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
                flat = (x * height + y)[..., None] * channels + np.arange(channels)
                candidates.append(np.where(inside[..., None], flat, outside).ravel())
        self.index = np.stack(candidates)  # (kh * kw, W_out * H_out * C)
        self.columns = np.arange(self.index.shape[1])
        self.out_shape = tuple(params["out_shape"])

    def __call__(self, c: np.ndarray, count: np.ndarray, s: np.ndarray,
                 live: bool) -> np.ndarray:
        """In place on the counts ``c`` and ``count``: ``c += s``, pass the spikes of each
        window's first candidate with the largest ``c``; both counts zeroed in the reset step."""
        if live:
            c += s
        else:
            c[:] = 0
        pick = np.append(c.ravel(), -1)[self.index].argmax(axis=0)
        chosen = self.index[pick, self.columns]
        out = (np.append(s.ravel(), False)[chosen] & live).reshape(self.out_shape)
        if live:
            count += out
        else:
            count[:] = 0
        return out


def _wrap(a: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap of int64 values to ``bits`` (Lava's ``signed_clamp``)."""
    half = 1 << (bits - 1)
    return ((a + half) & ((1 << bits) - 1)) - half


def _sum_bound(proc, weights: np.ndarray, message_bits: int, shift: int = 0) -> int:
    """Largest possible |synaptic sum| (times ``2**shift``); refuse one that would leave the
    range where Lava's stock model is exact."""
    s_max = 1 if message_bits == 0 else 2 ** (message_bits - 1)
    rows = np.abs(weights.reshape(len(weights), -1).astype(np.int64)).sum(axis=1)
    bound = int(rows.max(initial=0)) * s_max << max(shift, 0)
    if bound >= EXACT_SUM:
        raise LavaconvError(f"synapse {proc.name}: synaptic sums may reach {bound:.3g} >= 2**31, "
                            "where Lava's stock model overflows; run Lava with fast=False")
    return bound


class DenseKernel:
    """Lava's ``PyDenseModelBitAcc``: weights clipped to 8 bits and truncated to
    ``num_weight_bits`` once, ``a = (W @ s) << weight_exp`` (flooring shift when negative)."""

    def __init__(self, proc: LavaDense) -> None:
        params = proc.proc_params
        weights = np.asarray(proc.weights.init)
        sign_mode = params.get("sign_mode") or determine_sign_mode(weights)
        weights = clip_weights(weights, sign_mode, num_bits=8)
        weights = truncate_weights(weights, sign_mode, params.get("num_weight_bits", 8))
        self.message_bits = int(np.asarray(proc.num_message_bits.init).item())
        self.weight_exp = int(params.get("weight_exp", 0))
        _sum_bound(proc, weights, self.message_bits, self.weight_exp)  # int32 never wraps
        self.weights = weights.astype(np.float64)  # integer sums below 2**53 are exact

    def __call__(self, s: np.ndarray) -> np.ndarray:
        s = s.ravel()
        s = s if self.message_bits > 0 else s != 0  # num_message_bits 0: binary spikes
        a = np.rint(self.weights @ s).astype(np.int64)
        return a << self.weight_exp if self.weight_exp > 0 else a >> -self.weight_exp


class ConvKernel:
    """Lava's ``PyConvModelFixed``: a true convolution in ``(W, H)`` (weights ``(C_out, kW, kH,
    C_in / groups)``), then wrapped to 24 bits; ``weight_exp`` and ``num_weight_bits`` are ignored
    there and here."""

    def __init__(self, proc: LavaConv) -> None:
        def value(var) -> tuple[int, ...]:
            return tuple(int(x) for x in np.ravel(var.init))

        weight = np.asarray(proc.weight.init)
        self.message_bits = int(np.asarray(proc.num_message_bits.init).item())
        bound = _sum_bound(proc, weight, self.message_bits)
        self.wraps = bound >= 2**23
        # integer sums are exact in float32 below 2**24 in any order: torch's CPU conv2d sums
        # products directly or by im2col-GEMM, never by Winograd or FFT transforms
        self.dtype = np.float32 if bound < 2**24 else np.float64
        # correlation kernel (C_out, C_in / g, kW, kH) over (1, C, W, H): flip, channels first
        flipped = weight[:, ::-1, ::-1, :].transpose(0, 3, 1, 2)
        self.kernel = torch.from_numpy(np.ascontiguousarray(flipped, dtype=self.dtype))
        self.stride, self.padding = value(proc.stride), value(proc.padding)
        self.dilation, self.groups = value(proc.dilation), value(proc.groups)[0]

    def __call__(self, s: np.ndarray) -> np.ndarray:
        s = s if self.message_bits > 0 else s != 0
        x = torch.from_numpy(s.astype(self.dtype)).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = F.conv2d(x, self.kernel, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=self.groups)
        a = np.rint(y[0].permute(1, 2, 0).numpy()).astype(np.int64)
        return _wrap(a, 24) if self.wraps else a
