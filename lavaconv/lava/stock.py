"""A network with ``'lif'`` populations as a graph of stock Lava processes only.

Every process is Lava's own (``lava.proc.*``), the kinds Intel's extension maps to Loihi 2
(``LIF``, ``Dense``, ``Sparse``, ``Conv``) plus the host-side input (``io.source.RingBuffer``)
and, for the check against the engine, ``Monitor`` probes of the spikes. The construction and
its exact arithmetic are in :mod:`lavaconv.ir.stock` and docs/design.md section 7:

- an IF population: ``LIF(du=0, dv=4095, vth=vth >> 6, u=v_init)``, a ``Sparse`` diagonal
  self-connection ``-w_s`` (``weight_exp e_s``), one or two ``Sparse`` bias columns from a clock;
- its floor neuron: the same ``LIF`` with ``vth = FLOOR * vth >> 6``, ``u = -v_init``, a negated
  copy of every input (synapses, bias columns, ``+w_s`` from the population's spikes, its own
  ``-FLOOR * w_s`` self-connection), and a ``Sparse`` diagonal ``+FLOOR * w_s`` back into the
  population: it holds u above about ``-FLOOR * vth`` (u wraps, it does not saturate); none
  where ``IF.floor`` is off (netx's grid, ``quantize(netx=True)``);
- a clock per bias start: ``LIF((1,), du=4095, dv=0, vth=0, bias_mant=1, v=-(t_start-1))``,
  which spikes at every step from ``t_start - 1`` on;
- the readout: ``LIF(du=4095, dv=0, vth=2**17-1, bias, v=-t_start*bias)``;
- synapses: ``Dense(weight_exp=a_exp)`` and ``Conv(weight << a_exp)`` (the CPU Conv model
  ignores ``weight_exp``).

Items run back to back, ``T`` steps each; between items every state Var is set back to its
initial value (``Var.set``; the stock processes have no reset of their own).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.run_configs import Loihi2HwCfg, Loihi2SimCfg, RunConfig
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.models import PyDenseModelBitAcc
from lava.proc.dense.process import Dense as LavaDense
from lava.proc.io.source import PySendModelFixed, RingBuffer
from lava.proc.lif.models import PyLifModelBitAcc
from lava.proc.lif.process import LIF
from lava.proc.monitor.process import Monitor
from lava.proc.sparse.models import PySparseModelBitAcc
from lava.proc.sparse.process import Sparse
from lava.utils.weightutils import SignMode
from scipy.sparse import csr_matrix, identity
from tqdm import tqdm

from lavaconv.errors import LavaconvError
from lavaconv.ir import stock
from lavaconv.ir.network import IF, Conv, Dense, Input, Network, Readout
from lavaconv.lava import lifecycle
from lavaconv.lava.dynamics import unpack_shaped
from lavaconv.lava.fused import kernel
from lavaconv.lava.graph import _check_int_weights, _connect, lava_shape, lava_synapse, to_lava
from lavaconv.lava.hardware import loihi2_available
from lavaconv.lava.procs.models import PySpikingNetworkModelFused
from lavaconv.lava.procs.process import SpikingNetwork
from lavaconv.lava.run import LavaResult, _torch_single_thread

MODELS = {LIF: PyLifModelBitAcc, LavaDense: PyDenseModelBitAcc, Sparse: PySparseModelBitAcc,
          LavaConv: PyConvModelFixed, RingBuffer: PySendModelFixed}
#: stock classes that run on the host, not on a Loihi 2 core, and what they need there
HOST = {RingBuffer: "RingBuffer input runs on the host: on Loihi 2 it needs lava-loihi's "
                    "embedded_io adapter (PyToNxAdapter) into the first synapse",
        Monitor: "Monitor probes run on the host (verification only; left out on Loihi 2)"}


def is_stock(net: Network) -> bool:
    """Whether ``net`` is an integer network built for the stock LIF graph."""
    return net.numeric == "int" and any(isinstance(n, IF) and n.reset == "lif"
                                        for n in net.nodes.values())


def class_name(proc: AbstractProcess) -> str:
    cls = type(proc)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class StockGraph:
    """The processes of one network and what resets them between items."""

    net: Network
    source: RingBuffer
    neurons: dict[str, LIF]  # node name → its LIF (populations and the readout)
    floors: dict[str, LIF]  # population → its floor neuron
    clocks: dict[int, LIF]  # first spiking step → clock LIF
    synapses: dict[str, AbstractProcess]  # "i:src->dst", "name.self", "name.bias0", ...
    monitors: dict[str, Monitor]
    steps: int
    items: int
    initial: list[tuple] = field(default_factory=list)  # (Var, value) restored between items

    @property
    def processes(self) -> list[AbstractProcess]:
        return [self.source, *self.neurons.values(), *self.floors.values(),
                *self.clocks.values(),
                *self.synapses.values(), *self.monitors.values()]

    @property
    def populations(self) -> list[str]:
        """The spiking populations' names, in order (the readout is not one)."""
        return [name for name in self.neurons if name != self.net.output_name]

    @property
    def top(self) -> AbstractProcess:
        return self.neurons[self.net.output_name]

    def process_classes(self) -> dict[str, int]:
        """Fully qualified class name → how many processes of it."""
        return dict(sorted(Counter(class_name(p) for p in self.processes).items()))


def _full(x: np.ndarray, shape) -> np.ndarray:
    """``x`` broadcast to the torch ``shape``, in Lava's layout, int64."""
    return np.ascontiguousarray(to_lava(np.broadcast_to(np.asarray(x), shape), shape)
                                ).astype(np.int64)


def _scalar_threshold(name: str, node: IF) -> int:
    vth = np.unique(np.asarray(node.v_threshold))
    if len(vth) != 1 or vth[0] % 64:
        raise LavaconvError(f"layer {name}: the stock LIF graph needs one threshold per "
                            "population, a multiple of 64; quantize with stock=True")
    return int(vth[0]) >> 6


def _readout_bias(name: str, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LIF ``bias_mant`` (13-bit signed) and ``bias_exp`` (0..7) per neuron."""
    mant, exp = bias.copy(), np.zeros_like(bias)
    for _ in range(8):
        big = (np.abs(mant) > 4095) & (mant % 2 == 0)
        mant[big] >>= 1
        exp[big] += 1
    if np.any(np.abs(mant) > 4095):
        raise LavaconvError(f"layer {name}: bias is not on LIF's 13-bit-mantissa grid")
    return mant, exp


def _sparse(weights, exp: int, name: str) -> Sparse:
    return Sparse(weights=csr_matrix(weights), weight_exp=exp, sign_mode=SignMode.MIXED,
                  num_weight_bits=8, num_message_bits=0, name=name)


def _synapse(key: str, syn: Dense | Conv, net: Network, sign: int = 1) -> AbstractProcess:
    """The stock Dense/Conv of ``syn`` (its weights times ``sign``: -1 for the floor neuron's
    mirrored copy)."""
    dst = net.nodes[syn.target]
    _check_int_weights(key, syn)
    weight = sign * np.asarray(syn.weight).astype(np.int64)
    if isinstance(syn, Dense) and weight.max(initial=0) > 254:
        raise LavaconvError(f"synapse {key}: a weight of -256 has no negation on Lava's 8-bit "
                            "grid; quantize with stock=True")
    if isinstance(syn, Dense):
        return lava_synapse(key, syn, net, weight, dst.a_exp)
    if dst.a_exp < 0:
        raise LavaconvError(f"synapse {key}: Lava's Conv has no weight exponent (the CPU model "
                            "ignores weight_exp), so a negative a_exp cannot be expressed")
    return lava_synapse(key, syn, net, weight << dst.a_exp)


def build_stock(net: Network, payload: np.ndarray, monitors: bool = True) -> StockGraph:
    """Stock processes for ``net`` playing ``payload`` ``(T, K, *input_shape)``; with
    ``monitors`` a ``Monitor`` records every population's spikes (for the check)."""
    if not is_stock(net):
        raise LavaconvError("the stock LIF graph needs an integer network with reset 'lif' "
                            "(quantize with stock=True)")
    problems = stock.obstacles(net)
    if problems:
        raise LavaconvError(problems[0])
    payload = np.asarray(payload).astype(np.int32)
    steps, items = payload.shape[:2]
    inp = net.nodes[net.input_name]
    by_item = np.swapaxes(to_lava(payload, inp.shape), 0, 1)  # (K, T, *lava shape)
    data = np.moveaxis(by_item.reshape(items * steps, *lava_shape(inp.shape)), 0, -1)
    source = RingBuffer(data=np.ascontiguousarray(data))
    graph = StockGraph(net, source, {}, {}, {}, {}, {}, steps, items)
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            continue
        shape = lava_shape(node.shape)
        n = int(np.prod(shape))
        if isinstance(node, Readout):
            if not node.lif or node.mode != "potential":
                raise LavaconvError(f"layer {name}: the stock graph reads the potential of a "
                                    "stock LIF (Readout.lif, mode potential)")
            bias = _full(node.bias, node.shape)
            mant, exp = _readout_bias(name, bias)
            v0 = -node.t_start * bias
            lif = LIF(shape=shape, du=4095, dv=0, vth=stock.READOUT_VTH, bias_mant=mant,
                      bias_exp=exp, u=0, v=v0, name=name)
            graph.initial += [(lif.u, np.zeros(shape)), (lif.v, v0)]
            graph.neurons[name] = lif
            continue
        vth = _scalar_threshold(name, node)
        try:
            w_s, e_s = stock.self_weight(vth)
        except ValueError as err:
            raise LavaconvError(f"layer {name}: {err}; quantize with stock=True") from None
        u0 = _full(node.v_init, node.shape)
        lif = LIF(shape=shape, du=0, dv=4095, vth=vth, bias_mant=0, u=u0, v=0, name=name)
        graph.initial += [(lif.u, u0), (lif.v, np.zeros(shape))]
        graph.neurons[name] = lif
        own = graph.synapses[f"{name}.self"] = _sparse(-w_s * identity(n, dtype=np.int64),
                                                       e_s, f"{name}.self")
        _connect(lif.s_out, own.s_in)
        _connect(own.a_out, lif.a_in)
        low = _floor_neuron(graph, name, lif, shape, vth, u0, (w_s, e_s)) if node.floor else None
        bias = _full(node.bias, node.shape).reshape(-1)
        if np.any(bias % 64):
            raise LavaconvError(f"layer {name}: bias is not on the stock grid (multiples of 64)")
        terms = stock.bias_terms(bias >> 6)
        if not np.array_equal(stock.terms_value(terms, bias.shape), bias >> 6):
            raise LavaconvError(f"layer {name}: bias is not on the stock Sparse-term grid; "
                                "quantize with stock=True")
        if terms:
            k = node.t_start - 1
            if k not in graph.clocks:
                graph.clocks[k] = LIF(shape=(1,), du=4095, dv=0, vth=0, bias_mant=1, u=0, v=-k,
                                      name=f"clock{k}")
                graph.initial += [(graph.clocks[k].u, np.zeros(1)),
                                  (graph.clocks[k].v, np.full(1, -k))]
        for i, (w, e) in enumerate(terms):
            for sign, target, key in ((1, lif, f"{name}.bias{i}"),
                                      (-1, low, f"{name}.floor.bias{i}"))[:1 + node.floor]:
                proc = graph.synapses[key] = _sparse(sign * w.reshape(n, 1), e, key)
                graph.clocks[node.t_start - 1].s_out.connect(proc.s_in)
                _connect(proc.a_out, target.a_in)
        if monitors:
            mon = graph.monitors[name] = Monitor()
            mon.probe(lif.s_out, steps * items)
    for i, syn in enumerate(net.synapses):
        key = f"{i}:{syn.source}->{syn.target}"
        proc = graph.synapses[key] = _synapse(key, syn, net)
        sender = source if syn.source == net.input_name else graph.neurons[syn.source]
        _connect(sender.s_out, proc.s_in)
        _connect(proc.a_out, graph.neurons[syn.target].a_in)
        if syn.target in graph.floors:  # its mirrored copy into the floor neuron
            mirror = graph.synapses[f"{key}.floor"] = _synapse(f"{key}.floor", syn, net, -1)
            _connect(sender.s_out, mirror.s_in)
            _connect(mirror.a_out, graph.floors[syn.target].a_in)
    for proc in graph.synapses.values():
        buffer = proc.a_buf if isinstance(proc, LavaConv) else proc.a_buff
        graph.initial.append((buffer, np.zeros(buffer.shape)))
    return graph


def _floor_neuron(graph: StockGraph, name: str, lif: LIF, shape: tuple, vth: int,
                  u0: np.ndarray, self_weight: tuple[int, int]) -> LIF:
    """The floor neuron of population ``name``: u_f = -u; above FLOOR * vth it fires and
    lifts u by as much."""
    w_s, e_s = self_weight
    low = graph.floors[name] = LIF(shape=shape, du=0, dv=4095, vth=stock.FLOOR * vth,
                                   bias_mant=0, u=-u0, v=0, name=f"{name}.floor")
    graph.initial += [(low.u, -u0), (low.v, np.zeros(shape))]
    eye = identity(int(np.prod(shape)), dtype=np.int64)
    for key, weights, exp, src, dst in (
            (f"{name}.mirror", w_s * eye, e_s, lif, low),  # main spikes: +vth into u_f
            (f"{name}.floor.self", -w_s * eye, e_s + 2, low, low),
            (f"{name}.lift", w_s * eye, e_s + 2, low, lif)):
        proc = graph.synapses[key] = _sparse(weights, exp, key)
        _connect(src.s_out, proc.s_in)
        _connect(proc.a_out, dst.a_in)
    return low


def hardware(graph: StockGraph) -> dict:
    """``{ready, missing}``: what running ``graph`` on Loihi 2 still lacks."""
    missing = [] if loihi2_available() else ["lava-loihi (Intel's Loihi 2 extension, INRC)"]
    missing += sorted({text for p in graph.processes for cls, text in HOST.items()
                       if isinstance(p, cls) and cls is not Monitor})
    return {"ready": not missing, "missing": missing}


def run_config(graph: StockGraph, target: str, fused: AbstractProcess | None = None
               ) -> RunConfig:
    """Lava's bit-accurate CPU models keyed by process instance (no model discovery), the
    ``fused`` wrapper's one-process model of them, or on Loihi 2 Lava's own selection (needs
    lava-loihi; not testable here)."""
    if target == "loihi2":
        if not loihi2_available():
            raise LavaconvError("--target loihi2 needs Intel's Lava extension for Loihi "
                                "(lava-loihi), which is not installed; use --target sim")
        return Loihi2HwCfg(select_tag="fixed_pt")
    if fused is not None:
        for proc in graph.synapses.values():
            kernel(proc)  # refuses, here rather than in Lava's process, what it cannot run
        return Loihi2SimCfg(select_tag="fixed_pt",
                            exception_proc_model_map={fused: PySpikingNetworkModelFused})
    chosen = {p: MODELS[type(p)] for p in graph.processes if type(p) in MODELS}
    return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=chosen)


def fused_wrapper(graph: StockGraph) -> SpikingNetwork:
    """The stock graph (built without monitors) as one process for the fused CPU model
    (:class:`lavaconv.lava.fused.FusedNetwork`): its populations' spikes counted, the readout
    LIF's v as the score, every item from the initial state."""
    if graph.monitors:
        raise LavaconvError("the fused model counts spikes itself: build without monitors")
    populations = [graph.neurons[name] for name in graph.populations]
    return SpikingNetwork(procs=graph.processes, counted=populations, readout=graph.top,
                          restart=graph.steps, name="stock")


def run_stock(net: Network, payload: np.ndarray, target: str = "sim", progress: bool = False,
              fast: bool | None = None) -> LavaResult:
    """Run the items of ``payload`` ``(T, K, *input_shape)`` through the stock graph; returns
    a :class:`lavaconv.lava.run.LavaResult`. ``fast`` (default: on ``sim``) steps the whole
    graph in one OS process with the fused model of Lava's bit-accurate models (spike counts
    from its ``count``); ``fast=False`` runs those models one OS process each (spike counts
    from ``Monitor`` probes). ``process_classes`` are the stock graph's either way."""
    fast = target == "sim" if fast is None else fast
    if fast and target != "sim":
        raise LavaconvError(f"the fused model runs on --target sim, not {target}")
    graph = build_stock(net, payload, monitors=target == "sim" and not fast)
    top = fused_wrapper(graph) if fast else graph.top
    cfg = run_config(graph, target, top if fast else None)
    readout, running = [], 0.0
    out = net.nodes[net.output_name]
    counted = graph.populations  # in the order the fused model counts them
    counts: dict[str, list[np.ndarray]] = {n: [] for n in counted}
    with _torch_single_thread():
        t0 = time.perf_counter()
        with lifecycle.running(top, cfg) as advance:
            startup = time.perf_counter() - t0
            for k in tqdm(range(graph.items), desc="lava", unit="item", disable=not progress):
                t1 = time.perf_counter()
                advance(graph.steps)
                running += time.perf_counter() - t1
                v = (top.score if fast else graph.top.v).get()
                readout.append(to_lava(np.rint(v).astype(np.int64), out.shape).reshape(-1))
                if fast:
                    shapes = [graph.neurons[n].s_out.shape for n in counted]
                    for name, x in zip(counted, unpack_shaped(top.count.get(), shapes,
                                                              graph.steps), strict=True):
                        counts[name].append(to_lava(x, net.nodes[name].shape))
                elif k + 1 < graph.items:
                    for var, value in graph.initial:
                        var.set(np.asarray(value))
            trains = {}
            for name, mon in graph.monitors.items():
                lif = graph.neurons[name]
                data = np.asarray(mon.get_data()[lif.name][lif.s_out.name])
                data = data.reshape(graph.items, graph.steps, *lif.s_out.shape) != 0
                trains[name] = to_lava(data, net.nodes[name].shape)
                counts[name] = list(trains[name].sum(axis=1, dtype=np.int64))
    return LavaResult({n: np.stack(c) for n, c in counts.items()}, np.stack(readout),
                      running / (graph.items * graph.steps), startup, graph.process_classes(),
                      hardware(graph), trains)


def describe(net: Network) -> dict:
    """``process_classes`` and ``hardware`` of the stock graph of ``net`` (built, not run)."""
    shape = net.nodes[net.input_name].shape
    graph = build_stock(net, np.zeros((1, 1, *shape), np.int32), monitors=False)
    return {"process_classes": graph.process_classes(), "hardware": hardware(graph)}

