"""Lava processes of lavaconv: interfaces only (ports, Vars, parameters); behaviour in models.py.

Every process runs items back to back with a period of ``steps + 1`` timesteps
(docs/design.md section 4): local step ``t = (time_step - 1) mod (steps + 1)``; steps
``t < steps`` compute the item, step ``t == steps`` silences every output and resets all state
(potentials to ``v_init``, everything else to zero), so the next item starts afresh. Arrays use
Lava's layout: maps are ``(W, H, C)``.

:class:`SpikingNetwork` wraps a whole graph of these (plus Lava's stock Dense/Conv synapses) as
one hierarchical process, so that Lava's model selection decides how the same graph runs.

This folder holds only this file and ``models.py``: Lava's model discovery executes every
``.py`` file next to a process's module.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var

from lavaconv.lava.dynamics import count_words

RESETS = ("subtract", "zero", "snm")
READOUTS = ("potential", "count", "softmax")


def _full(value: np.ndarray | float, shape: tuple[int, ...]) -> np.ndarray:
    return np.array(np.broadcast_to(value, shape))


class Integrator(AbstractProcess):
    """Shared interface of :class:`Readout` and :class:`IFNeuron`: input, potential, bias.

    ``a_exp`` is the dendritic exponent of fixed point (``G(a) = a << (6 + a_exp)``), ``t_start``
    the first local step with bias current, ``state_bits`` the width v saturates to, ``v_init``
    the potential every item starts from (and the reset step restores).
    """

    def __init__(self, *, shape: tuple[int, ...], bias: np.ndarray | float = 0,
                 a_exp: int = 0, t_start: int = 0, steps: int, state_bits: int = 24,
                 v_init: np.ndarray | float = 0, name: str | None = None, **kwargs) -> None:
        super().__init__(shape=shape, bias=bias, a_exp=a_exp, t_start=t_start, steps=steps,
                         state_bits=state_bits, name=name, **kwargs)
        self.a_in = InPort(shape=shape)
        self.v = Var(shape=shape, init=_full(v_init, shape))
        self.v_init = Var(shape=shape, init=_full(v_init, shape))
        self.bias = Var(shape=shape, init=_full(bias, shape))
        self.a_exp = Var(shape=(1,), init=a_exp)


class Readout(Integrator):
    """Non-spiking integrator (the output layer), read at the item's last step.

    Dynamics per step t < steps (G: identity in floating point, ``a << (6 + a_exp)`` with
    a flooring right shift when negative in fixed point; sat: clip to ``state_bits`` signed)::

        v[t] = sat(v[t-1] + G(a_in[t]) + bias * [t >= t_start])

    from ``v = v_init`` (lavaconv's readouts start at 0), restored at the reset step
    ``t == steps``. ``mode`` says what is read (lavaconv.ir.network.Readout): ``potential`` and
    ``softmax`` read v (a spiking softmax samples classes from v off-chip); ``count`` also
    fires, with reset by subtraction at ``vth`` and no output port, and reads the per-item
    spike ``count`` (the neuron that spiked most, Rueckauer sec. 3.5).
    """

    def __init__(self, *, shape: tuple[int, ...], vth: np.ndarray | float = 1,
                 mode: str = "potential", **kwargs) -> None:
        if mode not in READOUTS:
            raise ValueError(f"Readout mode must be one of {READOUTS}, not {mode!r}")
        super().__init__(shape=shape, mode=mode, **kwargs)
        self.vth = Var(shape=shape, init=_full(vth, shape))
        self.count = Var(shape=shape, init=0)


class IFNeuron(Integrator):
    """Integrate-and-fire population: reset by subtraction, to zero, or the signed neuron with
    memory of Wang et al. 2022 (SNM).

    Dynamics per step t < steps (v integrates as in :class:`Readout`, then)::

        s[t]     = +n where v[t] >= n * vth, n <= burst the largest such
                   -n where v[t] <= -n * vth, n <= min(burst, m)  (reset='snm', SNM eq. 9)
        v[t]    -= vth * s[t]          (reset='subtract' and 'snm': RMP / Rueckauer eq. 4b)
        v[t]     = 0 where s[t] != 0   (reset='zero': hard reset, Rueckauer eq. 4a)
        m       += s[t]                (reset='snm': net spikes sent, SNM eq. 11)
        s_out[t] = payload * s[t]      (a graded spike worth ``payload``; 1: binary spikes)
        count   += s[t] != 0           (spike events in the current item; a burst is one)

    and ``s_out = 0``, ``v = v_init``, ``m = 0``, ``count = 0`` at the reset step.
    """

    def __init__(self, *, shape: tuple[int, ...], vth: np.ndarray | float,
                 reset: str = "subtract", payload: np.ndarray | float = 1, burst: int = 1,
                 **kwargs) -> None:
        if reset not in RESETS:
            raise ValueError(f"IFNeuron reset must be one of {RESETS}, not {reset!r}")
        super().__init__(shape=shape, reset=reset, burst=burst, **kwargs)
        self.s_out = OutPort(shape=shape)
        self.vth = Var(shape=shape, init=_full(vth, shape))
        self.payload = Var(shape=shape, init=_full(payload, shape))
        self.m = Var(shape=shape, init=0)
        self.count = Var(shape=shape, init=0)


class SpikeSource(AbstractProcess):
    """Plays back a payload: item k's step t sends ``payload[k, t]`` (graded or ±1 spikes).

    ``payload`` is ``(K, steps, *shape)``; the reset step of every item and every step after
    the last item send zeros, so synapses fed by this source hold zero at each item's step 0.
    """

    def __init__(self, *, payload: np.ndarray, name: str | None = None, **kwargs) -> None:
        items, steps, *shape = payload.shape
        super().__init__(items=items, steps=steps, name=name, **kwargs)
        self.s_out = OutPort(shape=tuple(shape))
        self.payload = Var(shape=payload.shape, init=payload)


class MaxPoolGate(AbstractProcess):
    """Spiking max-pool, no delay: rate-gated (``mode='gate'``, Rueckauer et al. 2017, sec.
    3.6) or the increase of the running maximum (``mode='running'``).

    Dynamics per step t < steps, for each window of ``s_in`` (kernel, stride and padding in
    Lava's (W, H) order; candidates in torch's row-major (h, w) window order)::

        c       += s_in[t]      (binary, graded or signed payloads)
        s_out[t] = s_in[t] at the first candidate with the largest c (padding never wins)
                   or, mode 'running', max c[t] - max c[t-1] over the window
        count   += s_out[t] != 0

    and ``c = 0``, ``count = 0``, ``s_out = 0`` at the reset step ``t == steps``.
    """

    def __init__(self, *, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                 kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 steps: int, mode: str = "gate", name: str | None = None, **kwargs) -> None:
        super().__init__(in_shape=in_shape, out_shape=out_shape, kernel=kernel, stride=stride,
                         padding=padding, steps=steps, mode=mode, name=name, **kwargs)
        self.s_in = InPort(shape=in_shape)
        self.s_out = OutPort(shape=out_shape)
        self.c = Var(shape=in_shape, init=0)
        self.count = Var(shape=out_shape, init=0)


class Delay(AbstractProcess):
    """A delay line of ``delay`` steps between a node and a synapse (``--align``), so that all
    inputs of a population arrive together (Loihi 2 delays synaptic messages natively)::

        s_out[t] = s_in[t - delay]  for delay <= t < steps,  0 otherwise

    with the buffer cleared at the reset step ``t == steps`` (any payload: binary, graded or
    signed)."""

    def __init__(self, *, shape: tuple[int, ...], delay: int, steps: int,
                 name: str | None = None, **kwargs) -> None:
        if delay < 1:
            raise ValueError(f"Delay needs delay >= 1, not {delay}")
        super().__init__(shape=shape, delay=delay, steps=steps, name=name, **kwargs)
        self.s_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)


COUNTED = (IFNeuron, MaxPoolGate)  # processes with a per-item spike ``count``


class SpikingNetwork(AbstractProcess):
    """A whole converted network as one hierarchical process.

    ``procs`` are the network's node processes in topological order followed by its synapse
    processes (Lava's stock ``Dense``/``Conv``), already built and connected
    (:func:`lavaconv.lava.graph.build`). Two models implement it: the sub-process model runs
    them as they are (Lava's stock models in simulation; Loihi 2), the fused CPU model
    (``fixed_pt``) steps all of them in one OS process with the same arithmetic. Either way::

        count = spike counts of the counted processes in the current item, flat, concatenated,
                packed (:func:`lavaconv.lava.dynamics.pack_counts`)
        score = what the readout's mode reads: its potential v, or its spike count

    (the fused model's Vars; with the sub-process model read the sub-processes' own Vars).
    ``counted`` defaults to the COUNTED processes, ``readout`` to the :class:`Readout`.

    The stock graph (:func:`lavaconv.lava.stock.build_stock`: stock processes only, no reset
    step) is wrapped in one only for the fused model, with its populations' LIFs ``counted``,
    the readout's LIF as ``readout`` and ``restart`` = the item length (each item starts from
    the initial state); what goes to Loihi 2 is the stock graph itself.
    """

    def __init__(self, *, procs: list[AbstractProcess], counted: list | None = None,
                 readout: AbstractProcess | None = None, restart: int | None = None,
                 name: str | None = None) -> None:
        if counted is None:
            counted = [p for p in procs if isinstance(p, COUNTED)]
        if readout is None:
            (readout,) = [p for p in procs if isinstance(p, Readout)]
        super().__init__(procs=procs, counted=counted, readout=readout, restart=restart,
                         name=name)
        sizes = [int(np.prod(p.s_out.shape)) for p in counted]
        steps = restart or int(procs[0].proc_params["steps"])
        self.count = Var(shape=(count_words(sum(sizes), steps)[2],), init=0)
        self.score = Var(shape=readout.v.shape, init=readout.v.init)
