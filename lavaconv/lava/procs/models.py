"""CPU process models of lavaconv's processes, one per numeric regime.

``floating_pt``: float64 state, ``G(a) = a``. ``fixed_pt``: the integer equations of
docs/design.md section 3 bit for bit (``G(a) = a << (6 + a_exp)``, flooring right shift for a
negative shift; v saturates to ``state_bits`` signed). The synaptic input ``a_in`` is the exact
sum of all incoming synapse outputs (int64), as in the design's equations.

Imports are absolute: Lava's model discovery also executes this file as a top-level module.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lavaconv.lava.procs.process import IFNeuron, MaxPoolGate, Readout, SpikeSource


class AbstractItemModel(PyLoihiProcessModel):
    """Items of ``steps`` timesteps, each followed by one reset step."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.steps: int = proc_params["steps"]

    def local_step(self) -> int:
        """Step within the current item; ``steps`` is the reset step."""
        return (self.time_step - 1) % (self.steps + 1)


class AbstractIntegratorModel(AbstractItemModel):
    """``v += G(a_in) + bias * [t >= t_start]``, saturated; v = 0 in the reset step."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.t_start: int = proc_params["t_start"]
        self.state_bits: int = proc_params["state_bits"]

    def gain(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def saturate(self, v: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def output(self, live: bool) -> None:
        """After the update of v: spike and reset (IF); nothing for a readout."""

    def run_spk(self) -> None:
        a = self.a_in.recv()
        t = self.local_step()
        live = t < self.steps
        if live:
            self.v[:] = self.saturate(self.v + self.gain(a) + self.bias * (t >= self.t_start))
        else:
            self.v[:] = 0
        self.output(live)


class FloatingPoint:
    """Float regime: identity gain, no saturation."""

    def gain(self, a: np.ndarray) -> np.ndarray:
        return a

    def saturate(self, v: np.ndarray) -> np.ndarray:
        return v


class FixedPoint:
    """Loihi-style integer regime (docs/design.md section 3)."""

    def gain(self, a: np.ndarray) -> np.ndarray:
        shift = 6 + int(self.a_exp[0])  # u = a << (6 + a_exp); floor shift when negative
        a = a.astype(np.int64)
        return np.left_shift(a, shift) if shift >= 0 else np.right_shift(a, -shift)

    def saturate(self, v: np.ndarray) -> np.ndarray:
        half = 2 ** (self.state_bits - 1)
        return np.clip(v, -half, half - 1)


class Fire:
    """IF spiking: ``s = v >= vth``, reset by subtraction or to zero, count per item."""

    def output(self, live: bool) -> None:
        s = (self.v >= self.vth) & live
        if self.proc_params["reset"] == "subtract":
            self.v[:] = self.v - self.vth * s
        else:
            self.v[s] = 0
        self.count[:] = self.count + s if live else 0
        self.s_out.send(s)


class AbstractIntegratorFloat(FloatingPoint, AbstractIntegratorModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    a_exp: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=4)  # unused in float


class AbstractIntegratorFixed(FixedPoint, AbstractIntegratorModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64, precision=32)  # exact sum
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)  # bias_mant << bias_exp
    a_exp: np.ndarray = LavaPyType(np.ndarray, np.int8, precision=4)


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyReadoutModelFloat(AbstractIntegratorFloat):
    pass


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyReadoutModelFixed(AbstractIntegratorFixed):
    pass


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFModelFloat(Fire, AbstractIntegratorFloat):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, bool, precision=1)
    vth: np.ndarray = LavaPyType(np.ndarray, float)
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyIFModelFixed(Fire, AbstractIntegratorFixed):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, bool, precision=1)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)  # vth_mant << 6
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


class AbstractSpikeSourceModel(AbstractItemModel):
    """Send ``payload[k, t]`` at step t of item k; zeros in reset steps and after the items."""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.items: int = proc_params["items"]

    def run_spk(self) -> None:
        t = self.local_step()
        k = (self.time_step - 1) // (self.steps + 1)
        if t < self.steps and k < self.items:
            self.s_out.send(self.payload[k, t])
        else:
            self.s_out.send(np.zeros(self.payload.shape[2:], self.payload.dtype))


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


@implements(proc=MaxPoolGate, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PyMaxPoolGateModel(AbstractItemModel):
    """Binary spikes and integer counts: the same model serves both regimes."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, bool, precision=1)
    c: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def windows(self, x: np.ndarray, fill: int) -> np.ndarray:
        """``(kh * kw, W_out, H_out, C)`` window candidates in torch's row-major order."""
        (kw, kh), (sw, sh), (pw, ph) = (self.proc_params[k] for k in
                                        ("kernel", "stride", "padding"))
        w_out, h_out, _ = self.proc_params["out_shape"]
        x = np.pad(x, ((pw, pw), (ph, ph), (0, 0)), constant_values=fill)
        return np.stack([x[j:j + sw * (w_out - 1) + 1:sw, i:i + sh * (h_out - 1) + 1:sh]
                         for i in range(kh) for j in range(kw)])

    def run_spk(self) -> None:
        s = self.s_in.recv().astype(bool)
        live = self.local_step() < self.steps
        self.c[:] = self.c + s if live else 0
        pick = self.windows(self.c, -1).argmax(axis=0)[None]  # first maximum; padding is -1
        out = np.take_along_axis(self.windows(s, 0), pick, axis=0)[0] & live
        self.count[:] = self.count + out if live else 0
        self.s_out.send(out)
