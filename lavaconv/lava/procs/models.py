"""CPU process models of lavaconv's processes, one per numeric regime, and the two models of
the whole-network :class:`SpikingNetwork`.

``floating_pt``: float64 state, ``G(a) = a``. ``fixed_pt``: the integer equations of
docs/design.md section 3 bit for bit (``G(a) = a << (6 + a_exp)``, flooring right shift for a
negative shift; v saturates to ``state_bits`` signed). The synaptic input ``a_in`` is the exact
sum of all incoming synapse outputs (int64), as in the design's equations. The arithmetic
itself lives in :mod:`lavaconv.lava.dynamics`, shared with the fused model.

Imports are absolute: Lava's model discovery also executes this file as a top-level module.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyAsyncProcessModel, PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.model.sub.model import AbstractSubProcessModel
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lavaconv.lava import dynamics
from lavaconv.lava.fused import FusedNetwork
from lavaconv.lava.procs.process import (
    Delay,
    IFNeuron,
    MaxPoolGate,
    Readout,
    SpikeSource,
    SpikingNetwork,
)


class AbstractItemModel(PyLoihiProcessModel):
    """Items of ``steps`` timesteps, each followed by one reset step."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.steps: int = proc_params["steps"]

    def local_step(self) -> int:
        """Step within the current item; ``steps`` is the reset step."""
        return dynamics.local_step(self.time_step, self.steps)[1]


class AbstractIntegratorModel(AbstractItemModel):
    """``v += G(a_in) + bias * [t >= t_start]``, saturated; v = 0 in the reset step."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.t_start: int = proc_params["t_start"]
        self.state_bits: int = proc_params["state_bits"]

    def gain(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def output(self, live: bool) -> None:
        """After the update of v: spike and reset (IF); nothing for a readout."""

    def run_spk(self) -> None:
        a = self.a_in.recv()
        t = self.local_step()
        live = t < self.steps
        dynamics.integrate(self.v, self.gain(a), self.bias, t >= self.t_start, live,
                           self.state_bits if self.saturates else None, self.v_init)
        self.output(live)


class FloatingPoint:
    """Float regime: identity gain, no saturation."""

    saturates = False

    def gain(self, a: np.ndarray) -> np.ndarray:
        return a


class FixedPoint:
    """Loihi-style integer regime (docs/design.md section 3)."""

    saturates = True

    def gain(self, a: np.ndarray) -> np.ndarray:
        return dynamics.fixed_gain(a, int(self.a_exp[0]))


class Fire:
    """IF spiking (:class:`IFNeuron`): signed spikes with the SNM memory where reset is 'snm',
    up to ``burst`` a step, sent as ``payload * s``."""

    def output(self, live: bool) -> None:
        reset = self.proc_params["reset"]
        s = dynamics.fire(self.v, self.vth, self.count, live, reset,
                          self.m if reset == "snm" else None, self.proc_params["burst"])
        self.s_out.send(s * self.payload)


class Score:
    """A readout in ``count`` mode fires (reset by subtraction) and counts, with no output."""

    def output(self, live: bool) -> None:
        if self.proc_params["mode"] == "count":
            dynamics.fire(self.v, self.vth, self.count, live, "subtract")


class AbstractIntegratorFloat(FloatingPoint, AbstractIntegratorModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    v_init: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    a_exp: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=4)  # unused in float
    vth: np.ndarray = LavaPyType(np.ndarray, float)
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


class AbstractIntegratorFixed(FixedPoint, AbstractIntegratorModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64, precision=32)  # exact sum
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    v_init: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)  # bias_mant << bias_exp
    a_exp: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=4)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)  # vth_mant << 6
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyReadoutModelFloat(Score, AbstractIntegratorFloat):
    pass


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyReadoutModelFixed(Score, AbstractIntegratorFixed):
    pass


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFModelFloat(Fire, AbstractIntegratorFloat):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    payload: np.ndarray = LavaPyType(np.ndarray, float)
    m: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyIFModelFixed(Fire, AbstractIntegratorFixed):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)  # graded
    payload: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    m: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


class AbstractSpikeSourceModel(AbstractItemModel):
    """Send ``payload[k, t]`` at step t of item k; zeros in reset steps and after the items."""

    def run_spk(self) -> None:
        item, t = dynamics.local_step(self.time_step, self.steps)
        self.s_out.send(dynamics.payload_at(self.payload, item, t))


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSourceModelFloat(AbstractSpikeSourceModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    payload: np.ndarray = LavaPyType(np.ndarray, float)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSourceModelFixed(AbstractSpikeSourceModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)  # graded
    payload: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


class AbstractMaxPoolGateModel(AbstractItemModel):
    """The max-pool of :class:`MaxPoolGate` (either mode) on whatever payload arrives."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.gate = dynamics.Gate(proc_params)

    def run_spk(self) -> None:
        live = self.local_step() < self.steps
        self.s_out.send(self.gate(self.c, self.count, self.s_in.recv(), live))


@implements(proc=MaxPoolGate, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyMaxPoolGateModelFloat(AbstractMaxPoolGateModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    c: np.ndarray = LavaPyType(np.ndarray, float)
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


@implements(proc=MaxPoolGate, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMaxPoolGateModelFixed(AbstractMaxPoolGateModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    c: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


class AbstractDelayModel(AbstractItemModel):
    """The delay line of :class:`Delay` on whatever payload arrives."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.line = dynamics.DelayLine(proc_params["delay"])

    def run_spk(self) -> None:
        t = self.local_step()
        self.s_out.send(self.line(self.s_in.recv(), t, t < self.steps))


@implements(proc=Delay, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDelayModelFloat(AbstractDelayModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=Delay, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayModelFixed(AbstractDelayModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)


@implements(proc=SpikingNetwork, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikingNetworkModelFused(PyAsyncProcessModel):
    """All sub-processes in this one OS process (:class:`~lavaconv.lava.fused.FusedNetwork`),
    which steps through Lava's timesteps itself: with no ports there is nothing to synchronise
    with, so Lava's per-step handshake (most of its per-step cost) is left out."""

    count: np.ndarray = LavaPyType(np.ndarray, np.int64)  # packed
    score: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.net = FusedNetwork(proc_params["procs"], proc_params["counted"],  # at start-up,
                                proc_params["readout"], proc_params["restart"])  # not step 1
        self.time_step = 0

    def run_async(self) -> None:
        self.score = self.net.score  # Lava reads Vars by name
        for _ in range(self.num_steps):
            self.time_step += 1
            self.net.step(self.time_step)
        self.count = dynamics.pack_counts(self.net.count, self.net.steps)


@implements(proc=SpikingNetwork, protocol=LoihiProtocol)
class SubSpikingNetworkModel(AbstractSubProcessModel):
    """The sub-processes as they are, each with its own model (stock, ours, or Loihi 2's)."""

    def __init__(self, proc: SpikingNetwork) -> None:
        for i, sub in enumerate(proc.proc_params["procs"]):
            setattr(self, f"proc_{i}", sub)  # Lava finds sub-processes among the attributes
