"""The arithmetic of the stock LIF soft-reset construction (:mod:`lavaconv.ir.stock`) on int64
tensors, as Lava's ``PyLifModelBitAcc`` computes it, for the engine off the CPU (on the CPU:
:func:`lavaconv.sim.kernels.lif_chunk`, tested against this); and the potentials that size its
threshold."""

from __future__ import annotations

import torch

from lavaconv.ir.stock import FLOOR, READOUT_VTH, U_HALF, V_LIMIT

F64 = torch.float64  # exact for every value here (|u * 4095| < 2**36, sums < 2**53)


def _leak_(u: torch.Tensor) -> torch.Tensor:
    return u.mul_(4095 / 4096).trunc_()


def _carry_(v: torch.Tensor) -> torch.Tensor:
    return v.mul_(2.0**-12).trunc_()


def leak(u: torch.Tensor) -> torch.Tensor:
    """``sgn(u) * ((|u| * 4095) >> 12)`` = ``trunc(u * 4095 / 4096)``: du = 0 with Loihi's
    ds_offset of 1 (exact in float64; a new tensor of ``u``'s dtype)."""
    return _leak_(u.to(F64, copy=True)).to(u.dtype)


def carry(v: torch.Tensor) -> torch.Tensor:
    """``sgn(v) * (|v| >> 12)`` = ``trunc(v / 4096)``: dv = 4095."""
    return _carry_(v.to(F64, copy=True)).to(v.dtype)


def wrap_u(u: torch.Tensor) -> torch.Tensor:
    """LIF's wrap of u: above 2**23 subtract 2**24, at or below -2**23 add 2**24 (in place)."""
    u.sub_(u.gt(U_HALF).to(u.dtype) * (2 * U_HALF))
    u.add_(u.le(-U_HALF).to(u.dtype) * (2 * U_HALF))
    return u


#: |u| below this: no u wraps, and neither v (|v| <= |u| + 2**11) nor the floor's v saturates
SAFE_U = V_LIMIT - 2**11


def lif_integrate_and_fire(current, steps: int, theta: torch.Tensor, u_init: torch.Tensor,
                           out: torch.Tensor, floor: bool = True) -> int:
    """The stock soft-reset neuron and its floor neuron for ``steps`` steps; ``current(t)`` is
    ``A[t] << 6`` without the self-connections (a new tensor, which the loop modifies). The
    floor neuron (threshold ``FLOOR * theta``) receives the negated input, so its u is -u
    (the wrap is symmetric but at exactly +-2**23: from the first such u on, it is stepped
    itself); when it fires, u gets ``FLOOR * theta`` one step later (:mod:`lavaconv.ir.stock`).
    Writes s[t] (0/1) into ``out[t]``; returns the neuron-steps whose u wrapped or v
    saturated. ``floor=False``: without the floor neuron (netx's grid, where u falls freely
    and wraps where Lava's does). Computed in float64, where every value is an exact
    integer; the wrap and saturation checks run only in steps where some |u| comes near the
    bounds."""
    theta = theta.to(F64)
    lift = FLOOR * theta
    u = u_init.to(F64, copy=True)
    u_f = None  # the floor neuron's u where it is no longer -u
    v, v_f = torch.zeros_like(u), torch.zeros_like(u)
    s = s_f = torch.zeros_like(u, dtype=torch.bool)
    clipped = 0
    for t in range(steps):
        x = current(t).to(F64)
        if t:
            x.addcmul_(s, theta, value=-1)
            if floor:
                x.addcmul_(s_f, lift)
        if u_f is not None:
            u_f = _leak_(u_f).sub_(x)
        u = _leak_(u).add_(x)
        lo, hi = torch.aminmax(u)
        near = bool(lo < -SAFE_U) or bool(hi > SAFE_U)
        if near:
            clipped += int(torch.count_nonzero(u.gt(U_HALF) | u.le(-U_HALF)))
            if floor and u_f is None and bool(torch.any(u.abs() == U_HALF)):
                u_f = -u  # wrapping u, or -u, at +-2**23 is the one asymmetric case
            wrap_u(u)
        if u_f is not None:
            wrap_u(u_f)
        _carry_(v).add_(u)
        if near or u_f is not None:
            clipped += int(torch.count_nonzero(v.abs() > V_LIMIT))
            v.clamp_(-V_LIMIT, V_LIMIT)
        s = v > theta
        v.masked_fill_(s, 0)
        out[t] = s
        if floor:
            _carry_(v_f)
            if u_f is None:
                v_f.sub_(u)
            else:
                v_f.add_(u_f)
            if near or u_f is not None:
                v_f.clamp_(-V_LIMIT, V_LIMIT)
            s_f = v_f > lift
            v_f.masked_fill_(s_f, 0)
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
