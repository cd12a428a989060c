"""Reading a network directory (``network.json`` + ``arrays.npz``) that anyone may have
written: every field is checked before a node is built, and every problem is one
:class:`LavaconvError` naming the file and the field."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np

from lavaconv.errors import LavaconvError, cut, shown
from lavaconv.ir import network as ir
from lavaconv.ir.npz import read_npz

FORMAT = "lavaconv-network/1"
MAX_NEURONS = 2**31  # per population
# (lowest, highest) of every integer field; a field not listed is a non-negative int
INT_RANGES = {"payload_bits": (0, 32), "a_exp": (-64, 64), "state_bits": (1, 64),
              "t_start": (0, 2**20), "delay": (0, 2**16), "groups": (1, 2**20),
              "burst": (1, ir.MAX_BURST)}
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
        if kind == "np.ndarray":
            return self.array(where, raw, positive=name in POSITIVE)
        if kind == "str":
            if not isinstance(raw, str):
                raise self.fail(where, f"expected a string, got {shown(raw)}")
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


def read_network(directory: Path) -> ir.Network:
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
    nodes = {name: reader.entry(f"nodes.{name}", raw, ir.NODE_TYPES)
             for name, raw in doc["nodes"].items()}
    synapses = [reader.entry(f"synapses[{i}]", raw, ir.SYN_TYPES)
                for i, raw in enumerate(doc["synapses"])]
    net = ir.Network(nodes, synapses, doc["numeric"], doc["meta"])
    _check_structure(reader, net)
    return net


def _check_structure(reader: _Reader, net: ir.Network) -> None:
    """One input first and one readout; sources before targets; array and weight shapes that
    fit the populations they belong to."""
    kinds = [type(n) for n in net.nodes.values()]
    if kinds.count(ir.Input) != 1 or kinds.count(ir.Readout) != 1 or kinds[0] is not ir.Input:
        raise reader.fail("nodes", "expected one Input (first) and one Readout")
    order = {name: i for i, name in enumerate(net.nodes)}
    for name, node in net.nodes.items():
        for f in fields(node):
            value = getattr(node, f.name)
            if isinstance(value, np.ndarray) and not _fits(value, node.shape):
                raise reader.fail(f"nodes.{name}.{f.name}", f"shape {value.shape} does not fit "
                                  f"the population's {node.shape}")
        if isinstance(node, ir.MaxPool):
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
                net.nodes[syn.target], (ir.IF, ir.Readout)):
            raise reader.fail(where, f"{syn.source} -> {syn.target}: a synapse runs from an "
                              "earlier node to a later population")
        expected = _weight_shape(syn, net.nodes[syn.source].shape, net.nodes[syn.target].shape)
        if expected is None or syn.weight.shape != expected:
            raise reader.fail(f"{where}.weight", f"shape {syn.weight.shape} does not connect "
                              f"{net.nodes[syn.source].shape} to {net.nodes[syn.target].shape}")


def _fits(a: np.ndarray, shape: ir.Shape) -> bool:
    """Whether ``a`` is a scalar, per-channel or full array of a population of ``shape``."""
    try:
        return np.broadcast_shapes(ir.per_channel(a, shape).shape, shape) == tuple(shape)
    except ValueError:
        return False


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_pool(reader: _Reader, name: str, node: ir.MaxPool, source: ir.Shape) -> None:
    if len(source) != 3 or len(node.shape) != 3 or node.shape[0] != source[0] or any(
            node.shape[d + 1] != _out_size(source[d + 1], node.kernel[d], node.stride[d],
                                           node.padding[d]) for d in range(2)):
        raise reader.fail(f"nodes.{name}.shape", f"{node.shape} is not the max-pool of "
                          f"{source} (kernel {node.kernel}, stride {node.stride})")


def _weight_shape(syn: ir.Synapse, source: ir.Shape,
                  target: ir.Shape) -> tuple[int, ...] | None:
    """The weight shape that connects ``source`` to ``target``; None if none does."""
    if isinstance(syn, ir.Dense):
        return math.prod(target), math.prod(source)
    if len(source) != 3 or len(target) != 3 or source[0] % syn.groups or target[0] % syn.groups:
        return None
    kh, kw = syn.weight.shape[2:] if syn.weight.ndim == 4 else (0, 0)
    spatial = tuple(_out_size(source[d + 1], (kh, kw)[d], syn.stride[d], syn.padding[d])
                    for d in range(2))
    return (target[0], source[0] // syn.groups, kh, kw) if spatial == target[1:] else None
