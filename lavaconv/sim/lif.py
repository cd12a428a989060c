"""The arithmetic of the stock LIF soft-reset construction (:mod:`lavaconv.ir.stock`) on int64
tensors, as Lava's ``PyLifModelBitAcc`` computes it, for the engine; and the potentials that size
its threshold."""

from __future__ import annotations

import torch

from lavaconv.ir.stock import FLOOR, READOUT_VTH, U_HALF, V_LIMIT


def _toward_zero_4096(x: torch.Tensor) -> torch.Tensor:
    """``sgn(x) * (|x| >> 12)`` (division by 4096 rounded toward zero) with shifts only, in
    place: an arithmetic shift floors, so negative values first get 4095 added."""
    return x.add_(x.bitwise_right_shift(63).bitwise_and_(4095)).bitwise_right_shift_(12)


def leak(u: torch.Tensor) -> torch.Tensor:
    """``sgn(u) * ((|u| * 4095) >> 12)``: du = 0 with Loihi's ds_offset of 1."""
    return _toward_zero_4096(u * 4095)


def carry(v: torch.Tensor) -> torch.Tensor:
    """``sgn(v) * (|v| >> 12)``: dv = 4095."""
    return _toward_zero_4096(v.clone())


def wrap_u(u: torch.Tensor) -> torch.Tensor:
    """LIF's wrap of u: above 2**23 subtract 2**24, at or below -2**23 add 2**24 (in place)."""
    u.sub_(u.gt(U_HALF).to(u.dtype) * (2 * U_HALF))
    u.add_(u.le(-U_HALF).to(u.dtype) * (2 * U_HALF))
    return u


def _beyond(x: torch.Tensor, low: int, high: int) -> bool:
    """Whether any entry of ``x`` lies outside ``[low, high]`` (one pass)."""
    if x.numel() == 0:
        return False
    lo, hi = torch.aminmax(x)
    return bool(lo < low) or bool(hi > high)


def lif_integrate_and_fire(current, steps: int, theta: torch.Tensor, u_init: torch.Tensor,
                           out: torch.Tensor) -> int:
    """The stock soft-reset neuron and its floor neuron for ``steps`` steps; ``current(t)`` is
    ``A[t] << 6`` without the self-connections (int64). The floor neuron (threshold
    ``FLOOR * theta``) receives the negated input, so its u is -u; when it fires, u gets
    ``FLOOR * theta`` one step later (:mod:`lavaconv.ir.stock`). Writes s[t] (0/1) into
    ``out[t]``; returns the neuron-steps whose u wrapped or v saturated."""
    lift = FLOOR * theta
    u, u_f = u_init.clone(), -u_init
    v, v_f = torch.zeros_like(u), torch.zeros_like(u)
    s = s_f = torch.zeros_like(u, dtype=torch.bool)
    clipped = 0
    for t in range(steps):
        x = current(t) - theta * s + lift * s_f
        u = leak(u).add_(x)
        u_f = leak(u_f).sub_(x)
        if _beyond(u, -U_HALF + 1, U_HALF):  # rare: one pass finds out
            clipped += int(torch.count_nonzero(u.gt(U_HALF) | u.le(-U_HALF)))
            wrap_u(u)
        if _beyond(u_f, -U_HALF + 1, U_HALF):
            wrap_u(u_f)
        v = carry(v).add_(u)
        v_f = carry(v_f).add_(u_f)
        if _beyond(v_f, -V_LIMIT, V_LIMIT):
            v_f.clamp_(-V_LIMIT, V_LIMIT)
        if _beyond(v, -V_LIMIT, V_LIMIT):
            clipped += int(torch.count_nonzero(v.abs() > V_LIMIT))
            v.clamp_(-V_LIMIT, V_LIMIT)
        s, s_f = v > theta, v_f > lift
        v.masked_fill_(s, 0)
        v_f.masked_fill_(s_f, 0)
        out[t] = s
    return clipped


def lif_readout(x: torch.Tensor, bias: torch.Tensor, t_start: int) -> tuple[torch.Tensor, int]:
    """v[t] (all t) of a readout LIF receiving ``x[t] = A[t] << 6`` (int64, (T, B, n)) and its
    own ``bias`` every step from ``v[-1] = -t_start * bias``; and the neuron-steps clipped or
    reset."""
    x = x.clone()
    bad = x.gt(U_HALF) | x.le(-U_HALF)
    clipped = int(torch.count_nonzero(bad))
    if clipped:
        wrap_u(x)
    x.add_(bias)
    v = torch.cumsum(x, 0) - t_start * bias
    limit = READOUT_VTH << 6
    if v.min() >= -V_LIMIT and v.max() <= limit:
        return v, clipped
    state = torch.zeros_like(x[0]) - t_start * bias
    for t in range(len(x)):
        state.add_(x[t])
        clipped += int(torch.count_nonzero((state.abs() > V_LIMIT) | (state > limit)))
        state.clamp_(-V_LIMIT, V_LIMIT)
        state.masked_fill_(state > limit, 0)
        v[t] = state
    return v, clipped
