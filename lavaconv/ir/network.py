"""The converted spiking network as plain data (in the spirit of NIR's node classes).

A :class:`Network` is an ordered dict of named nodes (topological order) plus a list of
synapses. Every synapse is one Lava ``Dense``/``Conv`` process and delays its source's
spikes by exactly one timestep; a :class:`MaxPool` gate reads its source's spikes in the
same timestep. Shapes are torch's: ``(C, H, W)`` for maps, ``(N,)`` for vectors.

The same classes hold the float network (``numeric == "float"``, thresholds 1.0) and the
integer network for a hardware profile (``numeric == "int"``): see ``docs/design.md`` for
the exact update equations of both.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lavaconv.errors import LavaconvError, cut, shown
from lavaconv.ir.npz import read_npz

Shape = tuple[int, ...]
RESETS = ("subtract", "zero", "snm", "lif")
READOUTS = ("potential", "count", "softmax")
ENCODINGS = ("analog", "poisson", "delta")
MAX_BURST = 16
POOLS = ("gate", "running")
FORMAT = "lavaconv-network/1"


def _array(x) -> np.ndarray:
    return np.asarray(x)


def per_channel(a: np.ndarray, shape: Shape) -> np.ndarray:
    """A scalar or per-channel ``(C,)`` array shaped to broadcast against ``shape`` (a ``(C,
    H, W)`` map gets ``(C, 1, 1)``; anything else is returned as it is)."""
    a = np.asarray(a)
    return a.reshape(-1, *[1] * (len(shape) - 1)) if a.ndim == 1 and len(shape) > 1 else a


@dataclass
class Input:
    """Spike source. ``analog``: the item's value ``x/scale`` every step (graded spike);
    ``poisson``: signed binary spikes, ``P(s=±1) = |x|/scale`` (RMP-SNN sec. 3.1);
    ``delta``: Lava's ``Delta`` encoder (sigma-delta networks) fed ``p = x/scale`` (float) or
    ``p = round(x * gain)`` (int) every step::

        act[t]   = p[t] << state_exp                  (int; float: p[t])
        delta[t] = act[t] - act[t-1] + r[t-1]
        s[t]     = delta[t] if |delta[t]| >= delta_threshold else 0;  r[t] = delta[t] - s[t]
        m[t]     = s[t] >> state_exp                  (int; float: s[t]); what synapses read
    """

    shape: Shape
    encoding: str = "analog"
    scale: float = 1.0  # lambda_in: input value carried by a unit spike
    payload_bits: int = 0  # int mode, analog: graded payload is round(x * gain), |.| < 2**(bits-1)
    gain: float = 1.0  # int mode, analog: payload per unit of x / scale
    x_max: float | None = None  # max |x| over the calibration items (the analog gain's range)
    delta_threshold: float = 0.0  # delta: the encoder's threshold (int: the full value)
    state_exp: int = 0  # delta, int mode

    is_signed = True  # analog values and Poisson spikes both carry a sign

    @property
    def is_graded(self) -> bool:
        return self.encoding != "poisson"

    def max_payload(self, numeric: str) -> float:
        if self.encoding == "poisson":
            return 1.0
        if self.encoding == "delta" and numeric == "int":  # a change of the payload
            return float(2 ** self.payload_bits - 2)
        return float(2 ** (self.payload_bits - 1) - 1) if numeric == "int" else np.inf


@dataclass
class IF:
    """Integrate-and-fire population (one per ANN ReLU).

    a[t]  = sum_e syn_e(p_src[t-1-d_e])        (one step of delay per synapse, plus its delay)
    v[-1] = v_init;  m[-1] = 0
    v[t]  = v[t-1] + G(a[t]) + bias * [t >= t_start]
    s[t]  = +1 where v[t] >= v_threshold
            -1 where v[t] <= -v_threshold and m[t-1] > 0  (reset='snm' only)
             0 otherwise
    v[t] -= v_threshold * s[t]   (reset='subtract', RMP / reset-by-subtraction; and 'snm')
    v[t]  = 0 where s[t] != 0    (reset='zero', hard-reset IF)
    m[t]  = m[t-1] + s[t]        (reset='snm': the memory, net spikes sent so far)
    p[t]  = payload * s[t]       (what the synapses receive: the graded spike value)

    ``reset='lif'`` (int mode) is reset by subtraction built from Lava's stock ``LIF``:
    ``v_init`` is u's initial value, ``bias`` is on the stock grid, and the update is
    :mod:`lavaconv.sim.lif`'s (u leaks 1/4096 a step, v carries 1/4096, strict ``v > vth``);
    in float mode it is 'subtract'.
    ``reset='snm'`` is the signed neuron with memory (Wang et al. 2022, SNM eq. 7-11).
    ``burst`` > 1 lets a neuron send up to ``burst`` spikes in one step as one graded message
    (burst spikes, Li & Zeng, IJCAI 2022; a graded spike on Loihi 2); 1 is the plain IF neuron.
    ``payload`` is what one spike carries (SNM eq. 6: a spike is worth its threshold): 1 for
    binary spikes; in float mode it equals ``v_threshold`` relative to the layer's scale when
    thresholds differ per neuron (neuron-wise normalisation, SNM eq. 14), in int mode it is
    the integer graded payload. G is the identity in float mode; in int mode
    G(a) = a * 2**(6 + a_exp) (floor shift) and v saturates to the signed ``state_bits`` range.
    """

    shape: Shape
    bias: np.ndarray  # broadcastable to shape
    v_threshold: np.ndarray = field(default_factory=lambda: np.ones(()))
    reset: str = "subtract"
    t_start: int = 1  # first step at which the bias current flows (= earliest input arrival)
    scale: np.ndarray = field(default_factory=lambda: np.ones(()))  # lambda per channel
    a_exp: int = 0  # int mode
    state_bits: int = 24  # int mode
    v_init: np.ndarray = field(default_factory=lambda: np.zeros(()))  # initial potential
    payload: np.ndarray = field(default_factory=lambda: np.ones(()))  # value of one spike
    burst: int = 1  # most spikes per step (one graded message)
    floor: bool = True  # reset 'lif': with the stock form's floor neuron (off: netx's grid)

    def __post_init__(self) -> None:
        self.bias = _array(self.bias)
        self.v_init = _array(self.v_init)
        self.v_threshold = _array(self.v_threshold)
        self.scale = _array(self.scale)
        self.payload = _array(self.payload)
        if self.reset not in RESETS:
            raise ValueError(f"IF.reset must be one of {', '.join(RESETS)}, not {self.reset!r}")
        if not np.all(self.payload > 0):
            raise ValueError("IF.payload must be positive (a spike's value)")
        if not 1 <= self.burst <= MAX_BURST or (self.burst > 1
                                                and self.reset in ("zero", "lif")):
            raise ValueError(f"IF.burst must lie in [1, {MAX_BURST}] (1 with reset 'zero' or "
                             "'lif'), "
                             f"not {self.burst}")

    @property
    def is_signed(self) -> bool:
        """Whether it may send negative spikes (SNM)."""
        return self.reset == "snm"

    @property
    def is_graded(self) -> bool:
        """Whether a message may carry more than a unit spike (bursts, graded payloads)."""
        return self.burst > 1 or bool(np.any(self.payload != 1))

    def max_payload(self, numeric: str) -> float:
        """Largest |value| one message carries."""
        return float(np.abs(self.payload).max()) * self.burst

    def per_channel(self, a: np.ndarray) -> np.ndarray:
        """A scalar or per-channel ``(C,)`` array shaped to broadcast against the population."""
        return per_channel(a, self.shape)


@dataclass
class Readout:
    """Output layer: integrates like :class:`IF` (v[t] = v[t-1] + G(a[t]) + bias) and is read
    at the end. ``mode`` says how the class is read at step T:

    potential  argmax v[T-1] (never spikes)
    count      argmax of the spikes it fires as a reset-by-subtraction neuron with threshold
               ``v_threshold`` (Rueckauer et al. 2017, sec. 3.5: "the neuron that spiked most")
    softmax    argmax of the spikes of a spiking softmax (Rueckauer sec. 3.5, after Nessler et
               al. 2009): at every step one class k fires, drawn with P(k) = softmax(v[t] /
               v_threshold)_k from a seeded generator; off-chip, so not part of the int contract
    Ties go to the lowest class index. ``lif`` (int mode, potential): v is held in a stock
    Lava ``LIF`` (:mod:`lavaconv.ir.stock`): saturates at +-(2**23 - 1), resets to 0 above
    (2**17 - 1) << 6, and is equal to the plain integrator otherwise.
    """

    shape: Shape
    bias: np.ndarray
    t_start: int = 1
    scale: np.ndarray = field(default_factory=lambda: np.ones(()))
    a_exp: int = 0
    state_bits: int = 24
    mode: str = "potential"
    v_threshold: np.ndarray = field(default_factory=lambda: np.ones(()))
    lif: bool = False

    def __post_init__(self) -> None:
        self.bias = _array(self.bias)
        self.scale = _array(self.scale)
        self.v_threshold = _array(self.v_threshold)
        if self.mode not in READOUTS:
            raise ValueError(f"Readout.mode must be one of {', '.join(READOUTS)}, "
                             f"not {self.mode!r}")


@dataclass
class MaxPool:
    """Spiking max-pool, no delay. ``c[t] += p_src[t]`` (``p`` is the source's payload, so
    ``c`` counts spikes for binary spikes and sums their values for graded or signed ones: the
    running estimate of the source's activation either way). ``mode``:

    gate     rate-gated selection (Rueckauer et al. 2017, sec. 3.6): each window passes
             p_src[t] of its input with the largest c[t] (ties: first in row-major window
             order; padding never wins)
    running  each window sends max c[t] - max c[t-1] (over the window): what it has sent up
             to t is exactly the largest input's running sum. Binary in, binary out; never
             more than the largest |payload| in one step
    """

    shape: Shape
    source: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    scale: np.ndarray = field(default_factory=lambda: np.ones(()))
    mode: str = "gate"

    def __post_init__(self) -> None:
        self.scale = _array(self.scale)
        if self.mode not in POOLS:
            raise ValueError(f"MaxPool.mode must be one of {', '.join(POOLS)}, not {self.mode!r}")


@dataclass
class SigmaDelta:
    """Sigma-delta ReLU population: Lava's stock ``SigmaDelta`` (``act_mode`` RELU, no
    cumulative error), one per ANN ReLU (and two per 2x2 max-pool, docs/sigma-delta.md)::

        a[t]     = sum_e syn_e(m_src[t-1])            (one step of delay per synapse)
        sigma[t] = sigma[t-1] + a[t] + bias * [t == t_start]     (the bias arrives once, as a
                                                       pulse into a_in, with the first input)
        act[t]   = max(sigma[t], 0)
        delta[t] = act[t] - act[t-1] + r[t-1]
        s[t]     = delta[t] if |delta[t]| >= v_threshold else 0;   r[t] = delta[t] - s[t]
        m[t]     = s[t] >> state_exp   (int: floor; the shifted-out bits are lost, as in Lava
                                        0.10's PySigmaDeltaModelFixed; float: m[t] = s[t])

    All states start at 0. With constant input, act settles to the ANN's (normalised)
    activation and the sum of m to it within ``v_threshold``. Float mode: values in units of
    the layer's scale lambda. Int mode: ``v_threshold`` is Lava's ``vth`` Var (``vth <<
    (spike_exp + state_exp)``), ``bias`` the pulse in state units, ``message_bits`` the
    graded message width the synapses read.
    """

    shape: Shape
    bias: np.ndarray
    v_threshold: float = 0.03
    t_start: int = 1
    scale: np.ndarray = field(default_factory=lambda: np.ones(()))
    state_exp: int = 0
    spike_exp: int = 0
    state_bits: int = 24
    message_bits: int = 24

    is_signed = True  # a delta may be negative
    is_graded = True

    def __post_init__(self) -> None:
        self.bias = _array(self.bias)
        self.scale = _array(self.scale)
        if not self.v_threshold > 0:
            raise ValueError(f"SigmaDelta.v_threshold must be positive, not {self.v_threshold}")

    def max_payload(self, numeric: str) -> float:
        return float(2 ** (self.message_bits - 1) - 1) if numeric == "int" else np.inf

    def per_channel(self, a: np.ndarray) -> np.ndarray:
        return per_channel(a, self.shape)


@dataclass
class Sigma(Readout):
    """Readout of a sigma-delta network: Lava's stock ``Sigma`` (plus the bias pulse)::

        v[t] = v[t-1] + a[t] + bias * [t == t_start];   class = argmax v[T-1]

    ``v`` is the ANN's output (over the readout scale) once the network has settled."""


def _check_delay(syn) -> None:
    if not isinstance(syn.delay, int) or syn.delay < 0:
        raise ValueError(f"synapse {syn.source}->{syn.target}: delay must be a non-negative "
                         f"integer, not {syn.delay!r}")


@dataclass
class Conv:
    """Convolution synapse ``a = conv2d(s, weight)`` (torch layout O, I/groups, kH, kW)."""

    source: str
    target: str
    weight: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    delay: int = 0  # steps beyond the synapse's own one (aligns a population's inputs)

    def __post_init__(self) -> None:
        self.weight = _array(self.weight)
        _check_delay(self)


@dataclass
class Dense:
    """Dense synapse ``a = weight @ s.flatten()`` (source flattened in C, H, W order)."""

    source: str
    target: str
    weight: np.ndarray
    delay: int = 0  # steps beyond the synapse's own one (aligns a population's inputs)
    weight_exp: int = 0  # int mode: a = (weight @ s) << weight_exp (floor shift when < 0)

    def __post_init__(self) -> None:
        self.weight = _array(self.weight)
        _check_delay(self)


def _scalar(value):
    """JSON form of numpy scalars that reach the structure (e.g. an exponent from np.clip)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


Node = Input | IF | Readout | MaxPool | SigmaDelta
Synapse = Conv | Dense
NODE_TYPES = {c.__name__: c for c in (Input, IF, Readout, MaxPool, SigmaDelta, Sigma)}
SYN_TYPES = {c.__name__: c for c in (Conv, Dense)}


@dataclass
class Network:
    """Named nodes in topological order, synapses between them, and how to read them."""

    nodes: dict[str, Node]
    synapses: list[Synapse]
    numeric: str = "float"  # "float" or "int"
    meta: dict = field(default_factory=dict)  # neuron, norm, profile, ... (JSON-able)

    @property
    def input_name(self) -> str:
        return next(n for n, v in self.nodes.items() if isinstance(v, Input))

    @property
    def output_name(self) -> str:
        return next(n for n, v in self.nodes.items() if isinstance(v, Readout))

    @property
    def is_sigma_delta(self) -> bool:
        """Whether the populations are sigma-delta units (docs/sigma-delta.md)."""
        return any(isinstance(v, SigmaDelta) for v in self.nodes.values())

    def populations(self) -> list[str]:
        """The spiking populations (IF nodes), in order."""
        return [n for n, v in self.nodes.items() if isinstance(v, IF)]

    def inputs_of(self, name: str) -> list[Synapse]:
        return [s for s in self.synapses if s.target == name]

    def sender(self, name: str) -> str:
        """The node whose messages leave node ``name`` (a max-pool passes on its source's)."""
        node = self.nodes[name]
        return self.sender(node.source) if isinstance(node, MaxPool) else name

    def is_binary(self, name: str) -> bool:
        """Whether node ``name`` only ever sends 0 or 1 (a Lava synapse may read it as bool)."""
        node = self.nodes[self.sender(name)]
        return not (node.is_signed or node.is_graded)

    def is_graded(self, name: str) -> bool:
        """Whether a message of node ``name`` may carry more than a unit spike."""
        return self.nodes[self.sender(name)].is_graded

    def is_signed(self, name: str) -> bool:
        """Whether node ``name`` may send negative values."""
        return self.nodes[self.sender(name)].is_signed

    def max_payload(self, name: str) -> float:
        """Largest |value| node ``name`` sends in one step."""
        return self.nodes[self.sender(name)].max_payload(self.numeric)

    def arrivals(self) -> tuple[dict[str, int], dict[str, int]]:
        """First and last step at which each node's input can arrive: the shortest and longest
        path in synapses (plus their delays) from the input; a max-pool's are its source's."""
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for name, node in self.nodes.items():
            if isinstance(node, MaxPool):
                first[name], last[name] = first[node.source], last[node.source]
                continue
            ins = self.inputs_of(name)
            first[name] = min((first[s.source] + 1 + s.delay for s in ins), default=0)
            last[name] = max((last[s.source] + 1 + s.delay for s in ins), default=0)
        return first, last

    def depth(self) -> int:
        """Steps until the readout first receives input (one per synapse on the shortest path;
        on the longest with ``--align``)."""
        return self.nodes[self.output_name].t_start

    def save(self, directory: str | Path) -> None:
        """Write ``network.json`` (structure) and ``arrays.npz`` (every array) into *directory*."""
        directory = Path(directory)
        arrays: dict[str, np.ndarray] = {}

        def encode(prefix: str, obj) -> dict:
            out = {"type": type(obj).__name__}
            for f in fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, np.ndarray):
                    key = f"{prefix}.{f.name}"
                    arrays[key] = value
                    out[f.name] = {"array": key}
                else:
                    out[f.name] = list(value) if isinstance(value, tuple) else value
            return out

        doc = {
            "format": FORMAT,
            "numeric": self.numeric,
            "meta": self.meta,
            "nodes": {n: encode(f"node.{n}", v) for n, v in self.nodes.items()},
            "synapses": [encode(f"syn.{i}", s) for i, s in enumerate(self.synapses)],
        }
        (directory / "network.json").write_text(json.dumps(doc, indent=1, default=_scalar))
        np.savez(directory / "arrays.npz", **arrays)

    @classmethod
    def load(cls, directory: str | Path) -> Network:
        """Read back what :meth:`save` wrote (equal field by field), checking every field: a
        damaged or hostile directory raises :class:`LavaconvError` naming the file and field."""
        return _read(Path(directory))


# Reading a network directory that anyone may have written: every field is checked before a
# node is built, and every problem is one LavaconvError naming the file and the field.

MAX_NEURONS = 2**31  # per population
# (lowest, highest) of every integer field; a field not listed is a non-negative int
INT_RANGES = {"payload_bits": (0, 32), "a_exp": (-64, 64), "state_bits": (1, 64),
              "weight_exp": (-31, 31), "message_bits": (1, 32),
              "t_start": (0, 2**20), "delay": (0, 2**16), "groups": (1, 2**20),
              "burst": (1, MAX_BURST)}
POSITIVE = {"v_threshold", "scale", "payload", "gain"}  # every value > 0


class _Reader:
    """Checks one document; ``fail`` names the file and the field."""

    def __init__(self, directory: Path, arrays: dict[str, np.ndarray]) -> None:
        self.label = directory / "network.json"
        self.arrays = arrays

    def fail(self, where: str, problem: str) -> LavaconvError:
        return LavaconvError(f"{self.label}: {cut(where, 100)}: {problem}")

    def value(self, where: str, kind: str, raw: Any) -> Any:
        """One field of annotated type ``kind`` (as the dataclass spells it)."""
        name = where.rsplit(".", 1)[-1]
        if kind.endswith(" | None"):
            return None if raw is None else self.value(where, kind.removesuffix(" | None"), raw)
        if kind == "np.ndarray":
            return self.array(where, raw, positive=name in POSITIVE)
        if kind == "str":
            if not isinstance(raw, str):
                raise self.fail(where, f"expected a string, got {shown(raw)}")
            return raw
        if kind == "bool":
            if not isinstance(raw, bool):
                raise self.fail(where, f"expected true or false, got {shown(raw)}")
            return raw
        if kind == "float":
            ok = isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)
            if not ok or (name in POSITIVE and raw <= 0):
                raise self.fail(where, f"expected a finite number{' > 0' * (name in POSITIVE)}, "
                                f"got {shown(raw)}")
            return float(raw)
        if kind == "int":
            return self.integer(where, raw, *INT_RANGES.get(name, (0, 2**31)))
        if kind in ("Shape", "tuple[int, int]"):
            pair = kind != "Shape"
            if not isinstance(raw, list) or not (len(raw) == 2 if pair else 1 <= len(raw) <= 3):
                raise self.fail(where, f"expected {'2' if pair else '1 to 3'} integers, "
                                f"got {shown(raw)}")
            low = 0 if name == "padding" else 1
            dims = tuple(self.integer(f"{where}[{i}]", d, low, MAX_NEURONS)
                         for i, d in enumerate(raw))
            if not pair and math.prod(dims) > MAX_NEURONS:
                raise self.fail(where, f"{dims} has more than {MAX_NEURONS} neurons")
            return dims
        raise AssertionError(f"no check for field type {kind}")

    def integer(self, where: str, raw: Any, low: int, high: int) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            raise self.fail(where, f"expected an integer in [{low}, {high}], got {shown(raw)}")
        return raw

    def array(self, where: str, raw: Any, positive: bool) -> np.ndarray:
        key = raw.get("array") if isinstance(raw, dict) and len(raw) == 1 else None
        if not isinstance(key, str):
            raise self.fail(where, f"expected {{\"array\": KEY}}, got {shown(raw)}")
        if key not in self.arrays:
            raise self.fail(where, f"array {shown(key)} is missing from arrays.npz")
        a = self.arrays[key]
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise self.fail(where, f"array {shown(key)} has non-numeric dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise self.fail(where, f"array {shown(key)} holds NaN or inf")
        if positive and not (a > 0).all():
            raise self.fail(where, f"array {shown(key)} must be positive everywhere")
        return a

    def entry(self, where: str, raw: Any, types: dict[str, type]) -> Any:
        """A node or synapse: its type, then every field present (a missing one keeps its
        default: written before the field existed)."""
        if not isinstance(raw, dict) or raw.get("type") not in types:
            got = raw.get("type") if isinstance(raw, dict) else raw
            raise self.fail(f"{where}.type", f"expected one of {', '.join(types)}, "
                            f"got {shown(got)}")
        cls = types[raw["type"]]
        specs = {f.name: f for f in fields(cls)}
        unknown = [k for k in raw if k != "type" and k not in specs]
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", f"unknown field of {cls.__name__}")
        kwargs = {}
        for name, spec in specs.items():
            if name in raw:
                kwargs[name] = self.value(f"{where}.{name}", spec.type, raw[name])
            elif spec.default is MISSING and spec.default_factory is MISSING:
                raise self.fail(f"{where}.{name}", "missing")
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise self.fail(where, str(err)) from None


def _read(directory: Path) -> Network:
    """The network in ``directory``, checked field by field and as a whole."""
    path = directory / "network.json"
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise LavaconvError(f"{path}: cannot read: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise LavaconvError(f"{path}: not valid JSON ({cut(str(err), 80)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LavaconvError(f"{path}: not a lavaconv network file (no \"format\": \"{FORMAT}\")")
    reader = _Reader(directory, read_npz(directory / "arrays.npz"))
    if doc.get("numeric") not in ("float", "int"):
        raise reader.fail("numeric", f"expected float or int, got {shown(doc.get('numeric'))}")
    for key, kind in (("meta", dict), ("nodes", dict), ("synapses", list)):
        if not isinstance(doc.get(key), kind):
            raise reader.fail(key, f"expected a JSON {'object' if kind is dict else 'array'}")
    nodes = {name: reader.entry(f"nodes.{name}", raw, NODE_TYPES)
             for name, raw in doc["nodes"].items()}
    synapses = [reader.entry(f"synapses[{i}]", raw, SYN_TYPES)
                for i, raw in enumerate(doc["synapses"])]
    net = Network(nodes, synapses, doc["numeric"], doc["meta"])
    _check_structure(reader, net)
    return net


def _check_structure(reader: _Reader, net: Network) -> None:
    """One input first and one readout; sources before targets; array and weight shapes that
    fit the populations they belong to."""
    kinds = [type(n) for n in net.nodes.values()]
    readouts = sum(issubclass(k, Readout) for k in kinds)
    if kinds.count(Input) != 1 or readouts != 1 or kinds[0] is not Input:
        raise reader.fail("nodes", "expected one Input (first) and one Readout")
    order = {name: i for i, name in enumerate(net.nodes)}
    for name, node in net.nodes.items():
        for f in fields(node):
            value = getattr(node, f.name)
            if isinstance(value, np.ndarray) and not _fits(value, node.shape):
                raise reader.fail(f"nodes.{name}.{f.name}", f"shape {value.shape} does not fit "
                                  f"the population's {node.shape}")
        if isinstance(node, MaxPool):
            if order.get(node.source, len(order)) >= order[name]:
                raise reader.fail(f"nodes.{name}.source", f"{shown(node.source)} is no earlier "
                                  "node")
            _check_pool(reader, name, node, net.nodes[node.source].shape)
    for i, syn in enumerate(net.synapses):
        where = f"synapses[{i}]"
        for end in ("source", "target"):
            if getattr(syn, end) not in net.nodes:
                raise reader.fail(f"{where}.{end}", f"no node {shown(getattr(syn, end))}")
        if order[syn.source] >= order[syn.target] or not isinstance(
                net.nodes[syn.target], (IF, Readout, SigmaDelta)):
            raise reader.fail(where, f"{syn.source} -> {syn.target}: a synapse runs from an "
                              "earlier node to a later population")
        expected = _weight_shape(syn, net.nodes[syn.source].shape, net.nodes[syn.target].shape)
        if expected is None or syn.weight.shape != expected:
            raise reader.fail(f"{where}.weight", f"shape {syn.weight.shape} does not connect "
                              f"{net.nodes[syn.source].shape} to {net.nodes[syn.target].shape}")


def _fits(a: np.ndarray, shape: Shape) -> bool:
    """Whether ``a`` is a scalar, per-channel or full array of a population of ``shape``."""
    try:
        return np.broadcast_shapes(per_channel(a, shape).shape, shape) == tuple(shape)
    except ValueError:
        return False


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_pool(reader: _Reader, name: str, node: MaxPool, source: Shape) -> None:
    if len(source) != 3 or len(node.shape) != 3 or node.shape[0] != source[0] or any(
            node.shape[d + 1] != _out_size(source[d + 1], node.kernel[d], node.stride[d],
                                           node.padding[d]) for d in range(2)):
        raise reader.fail(f"nodes.{name}.shape", f"{node.shape} is not the max-pool of "
                          f"{source} (kernel {node.kernel}, stride {node.stride})")


def _weight_shape(syn: Synapse, source: Shape,
                  target: Shape) -> tuple[int, ...] | None:
    """The weight shape that connects ``source`` to ``target``; None if none does."""
    if isinstance(syn, Dense):
        return math.prod(target), math.prod(source)
    if len(source) != 3 or len(target) != 3 or source[0] % syn.groups or target[0] % syn.groups:
        return None
    kh, kw = syn.weight.shape[2:] if syn.weight.ndim == 4 else (0, 0)
    spatial = tuple(_out_size(source[d + 1], (kh, kw)[d], syn.stride[d], syn.padding[d])
                    for d in range(2))
    return (target[0], source[0] // syn.groups, kh, kw) if spatial == target[1:] else None
