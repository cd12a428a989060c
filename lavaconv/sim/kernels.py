"""The engine's neuron updates as single-pass CPU kernels (numba).

A population's update is a handful of elementwise operations per step; as torch operations each
is one pass over the population's state (about six for an IF neuron, twenty for the stock LIF
pair). Here a chunk (a block of items times a block of steps) is stepped item by item, a few
vectorized loops over the item's neurons per step, while the block's state stays in cache; the
step's events are tallied as the spikes are written. The arithmetic is the torch loops'
(:func:`lavaconv.sim.engine.integrate_and_fire`, :mod:`lavaconv.sim.lif`), which stay the
reference and the path for tensors off the CPU: float mode in float32, integer mode in int64
(exact), the stock LIF pair as Lava's ``PyLifModelBitAcc`` update transcribed (int64
arithmetic on int32 state; the floor neuron's u as the mirror of the neuron's while that is exact).

Arrays are flat in the memory order of the population's spike train (:func:`flat`): ``(T, B *
M)``, the batch outermost, so an item's ``M`` neurons are one row and the per-neuron
parameters ``(M,)`` are in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch
from numba.core import codegen, registry

from lavaconv.ir.stock import FLOOR, U_HALF, V_LIMIT


def _wide_vectors() -> bool:
    """Let LLVM vectorize with the CPU's 512-bit registers, which it avoids on AVX-512 CPUs
    unless told (its ``prefer-256-bit`` tuning): the LIF pair's int64 loops then run 8 lanes
    wide, not 4. Numba fixes its CPU features when its CPU target is first used (the first njit
    function anywhere in the process), so this runs on import, before this module's; it does
    nothing where that has happened, where the user set ``NUMBA_CPU_FEATURES``, or without
    AVX-512. Whether it took effect (the arithmetic is the same either way)."""
    if numba.config.CPU_FEATURES is not None or "_toplevel_target_context" in vars(
            registry.cpu_target):
        return False
    features = codegen.get_host_cpu_features()
    if "+avx512f" not in features.split(","):
        return False
    numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    return True


#: whether the kernels are compiled for 512-bit vectors (:func:`_wide_vectors`)
WIDE_VECTORS = _wide_vectors()

#: reset codes of :func:`if_chunk`
RESETS = {"subtract": 0, "zero": 1, "snm": 2}


def memory_order(x: torch.Tensor) -> list[int]:
    """Dimensions of a ``(T, B, *shape)`` tensor, the first kept, the others by decreasing
    stride: the order in which a dense tensor lays its entries out (channels-last or not)."""
    return [0] + sorted(range(1, x.dim()), key=lambda d: -x.stride(d))


def flat(x: torch.Tensor, order: Sequence[int]) -> np.ndarray:
    """``(T, B, *shape)`` as a ``(T, B * M)`` numpy array in ``order`` (a view where ``x`` is
    laid out in that order, which the caller needs for arrays it writes)."""
    return x.permute(*order).reshape(len(x), -1).numpy()


def per_neuron(p: torch.Tensor, shape: Sequence[int], order: Sequence[int],
               dtype: torch.dtype) -> np.ndarray:
    """A parameter broadcastable to the population's ``shape`` as ``M`` entries in ``order``."""
    full = torch.empty((1, 1, *shape), dtype=dtype)
    full[:] = p.to(dtype)
    return full.permute(*order).reshape(-1).numpy()


@numba.njit(cache=True, nogil=True)
def _trunc12(x):
    """``sgn(x) (|x| >> 12)``: x / 4096 rounded toward zero, without a branch."""
    return (x + ((x >> 63) & 4095)) >> 12


@numba.njit(cache=True, nogil=True)
def _wrapped(u, x):
    """``wrap24(L(u) + x)``, ``L(u) = sgn(u) ((|u| 4095) >> 12)``, and whether it wrapped."""
    w = _trunc12(np.int64(u) * 4095) + x
    wraps = np.int64(w > U_HALF) + np.int64(w <= -U_HALF)  # (sums of bools: slower)
    w = w - 2 * U_HALF if w > U_HALF else w
    return (w + 2 * U_HALF if w <= -U_HALF else w), wraps


@numba.njit(cache=True, nogil=True)
def _lif_u(x, u, floor_u, mirrored):
    """The u half of one ``PyLifModelBitAcc`` update (du = 0) of a row of neurons on input ``x``
    (``A << 6``, int64), and of their floor neurons' on ``-x`` where ``floor_u`` is not None
    (int32, in place); returns how many of the neurons' u wrapped, and whether the floor
    neurons' u are still the neurons' mirror. (Two written arrays at most a loop, so that it
    vectorizes.)

    ``mirrored``: every floor u is the neuron's ``-u``. ``wrap24`` into (-2**23, 2**23] is odd
    except at 2**23 (``L`` is odd), so it then stays ``-u`` unless the new u is 2**23, where the
    floor's is 2**23 as well: the floor's update is that select, and the row is stepped in full
    from then on (rows hardly ever leave the mirror)."""
    events = 0
    if floor_u is None:
        for j in range(len(u)):
            u[j], e = _wrapped(u[j], x[j])
            events += e
        return events, mirrored
    if mirrored:
        hits = 0
        for j in range(len(u)):
            w, e = _wrapped(u[j], x[j])
            u[j], floor_u[j] = w, U_HALF if w == U_HALF else -w
            events += e
            hits += w == U_HALF
        return events, hits == 0
    for j in range(len(u)):
        u[j], e = _wrapped(u[j], x[j])
        floor_u[j], _ = _wrapped(floor_u[j], -x[j])
        events += e
    return events, False


@numba.njit(cache=True, nogil=True)
def _lif_v(u, theta, v, s):
    """The v half (dv = 4095): ``v = clip(C(v) + u, +-V_LIMIT)``, ``C(v) = sgn(v) (|v| >> 12)``;
    ``s = v > theta``; ``v = 0`` where s (v int32, s its spikes, in place); returns how many v
    clipped."""
    events = 0
    for j in range(len(u)):
        w = _trunc12(np.int64(v[j])) + u[j]
        events += np.int64(w > V_LIMIT) + np.int64(w < -V_LIMIT)
        w = min(max(w, -V_LIMIT), V_LIMIT)
        spiked = w > theta[j]
        v[j] = 0 if spiked else w
        s[j] = spiked
    return events


@numba.njit(cache=True, nogil=True)
def _sums(row, shortcut, t, first, x):
    """``x = row + scale * src[t - lag]`` for the neurons ``first ..`` of a row, ``shortcut`` =
    (src (T, N) bytes, scale (M,), lag): a per-channel scale of a byte train laid out like the
    population's (an identity shortcut; ``row`` alone where it is None or ``t < lag``), in
    row's type (every product exact: one rounding per sum)."""
    if shortcut is not None and t >= shortcut[2]:
        src, scale = shortcut[0][t - shortcut[2], first:first + len(x)], shortcut[1]
        for j in range(len(x)):
            x[j] = row[j] + scale[j] * src[j]
    else:
        for j in range(len(x)):
            x[j] = row[j]


@numba.njit(cache=True, nogil=True)
def lif_chunk(a, steps, t0, first, t_start, bias, theta, u, v, floor_spikes, mirrored, out,
              tally, shortcut):
    """Steps ``t0 .. t0 + steps - 1`` of the stock soft-reset LIF and its floor neuron
    (:mod:`lavaconv.ir.stock`) for neurons ``first ..`` (whole items): ``a`` their synaptic sums
    and ``shortcut`` as :func:`if_chunk`'s; ``bias``, ``theta`` (M,) int64 in ``A << 6``
    units; state ``u``, ``v`` (2, N) int32, the neuron's and its floor neuron's, the floor
    neuron's last spikes (N,) uint8 (``None``: no floor neuron) and whether each item's floor
    u are still the mirror of its u (B,) bool (see :func:`_lif_u`), updated; spikes into ``out``
    (T, N) (read back as the last step's), and their events into ``tally`` = (interval (T,)
    int64, events per step (T,) float64, events per neuron and interval (C, N) float32): step
    t's go to interval ``interval[t]``. Returns the neuron-steps whose u wrapped plus those
    whose v clipped (the floor neuron's not counted), as
    :func:`lavaconv.sim.lif.lif_integrate_and_fire`.
    """
    m = theta.shape[0]
    interval, per_step, counts = tally
    none = np.zeros_like(bias)  # the bias before t_start
    lift = FLOOR * theta
    x, y = np.empty(m, dtype=np.int64), np.empty(m, dtype=a.dtype)
    silent = np.zeros(m, dtype=out.dtype)
    events = 0
    for t in range(steps):
        b = bias if t0 + t >= t_start else none
        for c in range(0, a.shape[1], m):
            lo, hi = first + c, first + c + m
            row, s = a[t if a.shape[0] > 1 else 0, c:c + m], out[t0 + t, lo:hi]
            last = out[t0 + t - 1, lo:hi] if t0 + t else silent
            if shortcut is not None:
                _sums(row, shortcut, t0 + t, lo, y)
                row = y
            if floor_spikes is None:
                for j in range(m):
                    x[j] = np.int64(row[j]) * 64 + b[j] - (theta[j] if last[j] else 0)
                events += _lif_u(x, u[0, lo:hi], None, False)[0]
            else:
                sf = floor_spikes[lo:hi]
                for j in range(m):
                    x[j] = (np.int64(row[j]) * 64 + b[j] - (theta[j] if last[j] else 0)
                            + (lift[j] if sf[j] else 0))
                e, mirrored[lo // m] = _lif_u(x, u[0, lo:hi], u[1, lo:hi], mirrored[lo // m])
                events += e
                _lif_v(u[1, lo:hi], lift, v[1, lo:hi], sf)
            events += _lif_v(u[0, lo:hi], theta, v[0, lo:hi], s)
            per_step[t0 + t] += _tally(s, counts[interval[t0 + t], lo:hi])
    return events


@numba.njit(cache=True, nogil=True)
def _fire(v, vth, one, burst, reset, memory, out, counts):
    """Fire and reset one item's neurons at potentials ``v`` (in place; ``one``: 1 in v's type),
    spikes into ``out``: :func:`lavaconv.sim.engine.integrate_and_fire`'s rule; ``counts`` +=
    the events (spikes != 0); returns the events. The common case (one spike at most, no SNM
    memory) is a loop of its own, which vectorizes."""
    events = 0
    if burst == 1 and reset != 2:
        for j in range(len(v)):
            s = v[j] >= vth[j]
            v[j] = (v[j] - vth[j] if reset == 0 else one - one) if s else v[j]
            out[j] = s
            counts[j] += s
            events += s
        return events
    for j in range(len(v)):
        w, th, s, k = v[j], vth[j], 0, one
        while s < burst and w >= th * k:
            s += 1
            k += one
        if reset == 2:  # SNM eq. 9-11: negative spikes only up to the memory
            neg, k = 0, one
            while neg < burst and -w >= th * k:
                neg += 1
                k += one
            s -= min(neg, max(memory[j], 0))
            memory[j] += s
        if s != 0:
            v[j] = one - one if reset == 1 else w - (one * s) * th
        out[j] = s
        counts[j] += s != 0
        events += s != 0
    return events


@numba.njit(cache=True, nogil=True)
def if_chunk(a, steps, t0, first, t_start, gain, bias, vth, v, memory, bounds, burst, reset,
             out, tally, shortcut):
    """Steps ``t0 .. t0 + steps - 1`` of :class:`~lavaconv.ir.network.IF` (as
    :func:`lavaconv.sim.engine.integrate_and_fire` on the current of
    :class:`lavaconv.sim.engine._Current`) for neurons ``first ..`` (whole items) on their
    synaptic input ``a`` (steps, n), or (1, n) when every step's is the same, plus the
    ``shortcut`` of :func:`_sums` (None: none). Float mode (``bounds`` None, ``v`` float32):
    v += a + bias, in float32. Integer mode (``bounds`` (lo, hi), ``v`` int64, exact):
    v += G(a) + bias with ``G`` the gain ``2**gain`` (a floor shift when negative), then v
    saturates to the bounds.
    The bias from step ``t_start``; then fire (-burst .. burst spikes into ``out`` (T, N),
    events into ``tally`` as :func:`lif_chunk`) and reset (codes :data:`RESETS`; ``memory``
    (N,) int64: SNM's spike memory). Returns the neuron-steps saturated. (numba compiles the
    two modes apart: a branch on an argument that is None is pruned.)"""
    m = vth.shape[0]
    interval, per_step, counts = tally
    none = np.zeros_like(bias)  # the bias before t_start
    if bounds is None:
        one = np.float32(1)
    else:
        one = np.int64(1)
    saturated = 0
    x = np.empty(m, dtype=a.dtype)
    for t in range(steps):
        b = bias if t0 + t >= t_start else none
        for c in range(0, a.shape[1], m):
            i = first + c
            row, vv = a[t if a.shape[0] > 1 else 0, c:c + m], v[i:i + m]
            if shortcut is not None:
                _sums(row, shortcut, t0 + t, i, x)
                row = x
            if bounds is None:
                for j in range(m):
                    vv[j] += row[j] + b[j]
            else:
                lo, hi = bounds
                for j in range(m):
                    g = np.int64(row[j])
                    w = vv[j] + (g << gain if gain >= 0 else g >> -gain) + b[j]
                    saturated += (w < lo) + (w > hi)
                    vv[j] = min(max(w, lo), hi)
            per_step[t0 + t] += _fire(vv, vth, one, burst, reset, memory[i:i + m],
                                      out[t0 + t, i:i + m], counts[interval[t0 + t], i:i + m])
    return saturated


@numba.njit(cache=True, nogil=True)
def _tally(spikes, counts):
    """``counts += spikes != 0`` over a row; returns the row's events."""
    n = 0
    for j in range(len(spikes)):
        e = spikes[j] != 0
        counts[j] += e
        n += e
    return n


@numba.njit(cache=True, nogil=True)
def count_events(train, tally):
    """Tally the events (nonzero entries) of ``train`` (T, N) into ``tally`` (see
    :func:`lif_chunk`), blocks of neurons at a time (all steps each: their sums stay in
    cache)."""
    interval, per_step, counts = tally
    for first in range(0, train.shape[1], 4096):
        last = min(first + 4096, train.shape[1])
        for t in range(train.shape[0]):
            per_step[t] += _tally(train[t, first:last], counts[interval[t], first:last])
