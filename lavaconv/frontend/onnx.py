"""lavaconv's own ONNX importer: an ONNX model as a torch module, for the ops lavaconv converts.

The ``onnx`` package (the optional extra ``onnx``) only parses and checks the file. Each graph
node becomes one small module (named after the node, its class after the op type, so that
refusals in the canonical passes name the ONNX node) that computes it with torch functional ops;
float initializers and ``Constant`` values are float32 buffers. Shape arithmetic (``Shape``,
``Gather``, ``Unsqueeze``, ``Concat``, ``Cast``, as ``torch.onnx.export`` emits for
``x.view(x.size(0), -1)``) runs in numpy on the traced shapes and never enters the graph; a
``Reshape`` keeps the batch dimension as ``-1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lavaconv.errors import LavaconvError

TENSOR_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "MaxPool", "AveragePool",
              "GlobalAveragePool", "ReduceMean", "Concat", "Flatten", "Reshape",
              "BatchNormalization", "Identity", "Dropout", "Softmax", "Squeeze", "Unsqueeze")
SHAPE_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity")
SUPPORTED = ", ".join(sorted(set(TENSOR_OPS) | set(SHAPE_OPS)))

Value = Any  # a torch.Tensor (computed or a buffer), a numpy array (shape arithmetic) or None


def read_onnx(path: str | Path) -> nn.Module:
    """The ONNX model in ``path`` as an ``nn.Module`` in eval mode (one input, one output)."""
    path = Path(path)
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise LavaconvError(f"{path}: reading ONNX needs the optional extra 'onnx' (pip install "
                            "'lavaconv[onnx]'); instead export the model with "
                            "torch.export.save (.pt2)") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # a damaged or invalid file: protobuf and checker errors vary
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise LavaconvError(f"{path}: not a valid ONNX model ({text}); instead export the "
                            "model with torch.export.save (.pt2)") from None
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise LavaconvError(f"{path}: the ONNX graph has {len(inputs)} inputs and "
                            f"{len(graph.output)} outputs; lavaconv needs exactly one of each")
    dims = inputs[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if len(dims) else 0
    return _Importer(path, consts, numpy_helper, batch).run(graph, inputs[0].name).eval()


class OnnxGraph(nn.Module):
    """Evaluates the ONNX nodes in order; ``forward(x)`` returns the graph's output."""

    def __init__(self, input_name: str, output_name: str) -> None:
        super().__init__()
        self.input_name, self.output_name = input_name, output_name
        self.nodes = nn.ModuleDict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Value] = {self.input_name: x.float()}
        for node in self.nodes.values():  # a module call, so torch.export records its name
            env[node.outputs[0]] = node(*(node.value(n, env) for n in node.inputs))
        return env[self.output_name]


class _Node(nn.Module):
    """One ONNX node: ``fn`` maps its input values (tensors, buffers, numpy) to its outputs."""

    def __init__(self, inputs: list[str], outputs: list[str], fn: Callable[..., Value],
                 consts: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.inputs, self.outputs, self.fn = inputs, outputs, fn
        self.static: dict[str, np.ndarray] = {}
        self.buffer_of: dict[str, str] = {}
        for name in inputs:
            value = consts.get(name)
            if value is None:
                continue
            if value.dtype.kind == "f":
                self.buffer_of[name] = f"c{len(self.buffer_of)}"
                self.register_buffer(self.buffer_of[name],
                                     torch.from_numpy(np.array(value, np.float32)))
            else:
                self.static[name] = value

    def value(self, name: str, env: dict[str, Value]) -> Value:
        if not name:
            return None
        if name in self.buffer_of:
            return getattr(self, self.buffer_of[name])
        return self.static[name] if name in self.static else env[name]

    def forward(self, *args: Value) -> Value:
        return self.fn(*args)


_CLASSES: dict[str, type] = {}


def _node_class(op: str) -> type:
    """A ``_Node`` subclass named after the op type (the canonical passes' messages show it)."""
    if op not in _CLASSES:
        _CLASSES[op] = type(op, (_Node,), {"__module__": __name__})
    return _CLASSES[op]


def _ints(value: Value) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


class _Importer:
    """Builds an ``OnnxGraph`` node by node; refusals name the file, the node and its op."""

    def __init__(self, path: Path, consts: dict[str, np.ndarray], numpy_helper: Any,
                 batch: int) -> None:
        self.path, self.consts, self.numpy_helper = path, consts, numpy_helper
        self.batch = batch  # the input's batch size in the file (0: dynamic)
        self.shapes: set[str] = set()  # numpy values that depend on the input's shape

    def fail(self, node: Any, why: str) -> LavaconvError:
        name = node.name or node.output[0]
        return LavaconvError(f"{self.path}: ONNX node {name} ({node.op_type}) {why}; export "
                             "the model as .pt2 with torch.export instead")

    def attrs(self, node: Any) -> dict[str, Any]:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def run(self, graph: Any, input_name: str) -> OnnxGraph:
        module = OnnxGraph(input_name, graph.output[0].name)
        nodes = list(graph.node)
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            for name in node.input:
                consumers.setdefault(name, []).append(i)
        fused: set[int] = set()  # Adds merged into the MatMul before them
        for i, node in enumerate(nodes):
            if i in fused:
                continue
            if node.op_type not in TENSOR_OPS + SHAPE_OPS:
                raise LavaconvError(f"{self.path}: ONNX node {node.name or node.output[0]} "
                                    f"({node.op_type}) is not supported by lavaconv; supported: "
                                    f"{SUPPORTED}; export the model as .pt2 with torch.export "
                                    "instead")
            if len([o for o in node.output if o]) != 1 and node.op_type != "Dropout":
                raise self.fail(node, "has several outputs; lavaconv reads one")
            outputs = list(node.output[:1])
            if node.op_type == "MatMul":  # MatMul + Add of a constant bias: one linear
                users = consumers.get(node.output[0], [])
                add = nodes[users[0]] if len(users) == 1 else None
                if add is not None and add.op_type == "Add" and \
                        node.output[0] != module.output_name:
                    other = [n for n in add.input if n != node.output[0]]
                    if len(other) == 1 and other[0] in self.consts:
                        fused.add(users[0])
                        outputs = [add.output[0]]
                        node_inputs = [*node.input, other[0]]
                        self.add(module, node, node_inputs, outputs)
                        continue
            self.add(module, node, list(node.input), outputs)
        return module

    def add(self, module: OnnxGraph, node: Any, inputs: list[str], outputs: list[str]) -> None:
        """Fold ``node`` into the constants, or append it to ``module``."""
        static = all(not n or n in self.consts or n in self.shapes for n in inputs)
        if node.op_type == "Constant" or (static and node.op_type in SHAPE_OPS
                                          and node.op_type != "Shape"):
            fn = self.shape_op(node)
            if all(not n or n in self.consts for n in inputs):  # fold now
                self.consts[outputs[0]] = np.asarray(fn(*(self.consts.get(n) for n in inputs)))
                return
            self.shapes.add(outputs[0])
        elif node.op_type == "Shape":
            fn = self.shape_op(node)
            self.shapes.add(outputs[0])
        else:
            fn = self.tensor_op(node, inputs)
        key = re.sub(r"\W", "_", node.name or outputs[0]).strip("_") or "node"
        while key in module.nodes:
            key += "_"
        module.nodes[key] = _node_class(node.op_type)(inputs, outputs, fn, self.consts)

    def shape_op(self, node: Any) -> Callable[..., Value]:
        """Numpy arithmetic on constants and shapes."""
        op, a = node.op_type, self.attrs(node)
        if op == "Constant":
            if "value" in a:
                value = self.numpy_helper.to_array(a["value"])
            elif len(a) == 1 and next(iter(a)) in ("value_float", "value_floats", "value_int",
                                                    "value_ints"):
                value = np.asarray(next(iter(a.values())))
            else:
                raise self.fail(node, f"holds a {', '.join(a)} constant lavaconv cannot read")
            return lambda: value
        if op == "Shape":
            start, end = a.get("start", 0), a.get("end")
            return lambda x: np.asarray([int(d) for d in x.shape][start:end], np.int64)
        if op == "Gather":
            axis = a.get("axis", 0)
            return lambda data, idx: np.take(np.asarray(data), np.asarray(idx), axis=axis)
        if op == "Concat":
            axis = a["axis"]
            return lambda *xs: np.concatenate([np.atleast_1d(x) for x in xs], axis=axis)
        if op == "Cast":
            return lambda x: np.asarray(x)
        if op == "Identity":
            return lambda x: x
        if op in ("Unsqueeze", "Squeeze"):
            attr_axes = a.get("axes")

            def squeeze(x: Value, axes: Value = None) -> np.ndarray:
                axes = _ints(attr_axes if axes is None else axes) if (
                    attr_axes is not None or axes is not None) else None
                x = np.asarray(x)
                if op == "Squeeze":
                    return np.squeeze(x, axis=None if axes is None else tuple(axes))
                return np.expand_dims(x, tuple(axes))
            return squeeze
        raise self.fail(node, "computes shapes lavaconv cannot follow")

    def derived(self, name: str, value: np.ndarray) -> str:
        """A new constant computed from ``name`` (others may read ``name`` as it is)."""
        new = f"{name}:{len(self.consts)}"
        self.consts[new] = np.ascontiguousarray(value, np.float32)
        return new

    def const(self, node: Any, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.fail(node, f"takes its {what} from the input; lavaconv needs a constant")
        return self.consts[name]

    def tensor_op(self, node: Any, inputs: list[str]) -> Callable[..., Value]:
        """The torch computation of ``node``; attribute checks happen here, at import."""
        op, a = node.op_type, self.attrs(node)
        if op in ("Conv", "MaxPool", "AveragePool"):
            return self.window_op(node, a, inputs)
        if op == "Gemm":
            return self.gemm(node, a, inputs)
        if op == "MatMul":
            weight = self.const(node, inputs[1], "weights")
            if weight.ndim != 2:
                raise self.fail(node, f"multiplies by a {weight.ndim}-D matrix; lavaconv needs 2-D")
            inputs[1] = self.derived(inputs[1], weight.T)  # F.linear's layout
            if len(inputs) == 3:  # the fused Add's bias
                inputs[2] = self.derived(inputs[2], self.consts[inputs[2]].reshape(-1))
            return lambda x, w, b=None: F.linear(x, w, b)
        if op == "Add":
            return lambda x, y: x + y
        if op == "Relu":
            return F.relu
        if op == "Clip":
            return self.clip(node, a, inputs)
        if op == "GlobalAveragePool":
            return lambda x: F.adaptive_avg_pool2d(x, 1)
        if op == "ReduceMean":
            keep = bool(a.get("keepdims", 1))
            axes = a.get("axes") or (_ints(self.const(node, inputs[1], "axes"))
                                     if len(inputs) > 1 and inputs[1] else None)
            if not axes or 0 in axes:
                raise self.fail(node, "averages over the batch; lavaconv averages over space")
            return lambda x, _axes=None: x.mean(tuple(axes), keepdim=keep)
        if op == "Concat":
            if a["axis"] not in (1, -3):
                raise self.fail(node, f"concatenates along axis {a['axis']}; lavaconv "
                                      "concatenates channels (axis 1)")
            return lambda *xs: torch.cat(xs, 1)
        if op == "Flatten":
            if a.get("axis", 1) != 1:
                raise self.fail(node, f"flattens from axis {a.get('axis')}; lavaconv needs 1")
            return lambda x: torch.flatten(x, 1)
        if op == "Reshape":
            allow_zero = bool(a.get("allowzero", 0))
            batch = self.batch
            return lambda x, shape: x.reshape(_target(x.shape, _ints(shape), allow_zero, batch))
        if op in ("Squeeze", "Unsqueeze"):
            return self.squeeze(node, a, inputs)
        if op == "BatchNormalization":
            eps = float(a.get("epsilon", 1e-5))
            if a.get("training_mode", 0):
                raise self.fail(node, "is in training mode; export the model in eval mode")
            return lambda x, w, b, mean, var: F.batch_norm(x, mean, var, w, b, False, 0.0, eps)
        if op in ("Identity", "Dropout"):
            return lambda x, *_: x
        if op == "Softmax":
            axis = a.get("axis", -1)

            def softmax(x: torch.Tensor) -> torch.Tensor:
                if axis not in (-1, x.dim() - 1):
                    raise self.fail(node, f"takes the softmax over axis {axis}; lavaconv "
                                          "needs the last")
                return F.softmax(x, -1)
            return softmax
        raise self.fail(node, "is not supported by lavaconv")

    def window_op(self, node: Any, a: dict[str, Any], inputs: list[str]) -> Callable[..., Value]:
        op = node.op_type
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            raise self.fail(node, f"pads with auto_pad {a['auto_pad']!r}; lavaconv needs "
                                  "explicit symmetric pads")
        if op == "Conv":
            weight = self.const(node, inputs[1], "weights")
            kernel = list(weight.shape[2:])
        else:
            kernel = list(a["kernel_shape"])
        if len(kernel) != 2:
            raise self.fail(node, f"is {len(kernel)}-D; lavaconv needs 2-D")
        pads = list(a.get("pads", [0] * 4))
        if pads[:2] != pads[2:]:
            raise self.fail(node, f"pads asymmetrically ({pads}); lavaconv needs the same "
                                  "padding on both sides")
        stride = list(a.get("strides", [1, 1]))
        dilation = list(a.get("dilations", [1, 1]))
        ceil = bool(a.get("ceil_mode", 0))
        if op == "Conv":
            groups = int(a.get("group", 1))
            return lambda x, w, b=None: F.conv2d(x, w, b, stride, pads[:2], dilation, groups)
        if op == "MaxPool":
            return lambda x: F.max_pool2d(x, kernel, stride, pads[:2], dilation, ceil)
        if dilation != [1, 1]:
            raise self.fail(node, "is dilated; lavaconv's average pool is not")
        include = bool(a.get("count_include_pad", 0))
        return lambda x: F.avg_pool2d(x, kernel, stride, pads[:2], ceil, include)

    def gemm(self, node: Any, a: dict[str, Any], inputs: list[str]) -> Callable[..., Value]:
        if a.get("transA", 0):
            raise self.fail(node, "transposes its input (transA=1); lavaconv needs batch rows")
        weight = self.const(node, inputs[1], "weights")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        weight = weight if a.get("transB", 0) else weight.T
        inputs[1] = self.derived(inputs[1], alpha * weight)
        if len(inputs) > 2 and inputs[2]:
            bias = self.const(node, inputs[2], "bias")
            inputs[2] = self.derived(
                inputs[2], beta * np.broadcast_to(bias, (1, weight.shape[0])).reshape(-1))
        return lambda x, w, b=None: F.linear(x, w, b)

    def clip(self, node: Any, a: dict[str, Any], inputs: list[str]) -> Callable[..., Value]:
        bounds = [a.get("min"), a.get("max")]
        for i, name in enumerate(inputs[1:3]):
            if name:
                bounds[i] = float(self.const(node, name, "bound"))
        del inputs[1:]  # the bounds are numbers in the graph, not buffers
        low, high = bounds
        return lambda x: torch.clamp(x, low, high)

    def squeeze(self, node: Any, a: dict[str, Any], inputs: list[str]) -> Callable[..., Value]:
        axes = a.get("axes")
        if axes is None and len(inputs) > 1 and inputs[1]:
            axes = _ints(self.const(node, inputs[1], "axes"))
        if axes is None or any(ax == 0 for ax in axes):
            raise self.fail(node, "needs explicit axes other than the batch")
        squeeze = node.op_type == "Squeeze"

        def run(x: torch.Tensor, *_: Value) -> torch.Tensor:
            shape = list(x.shape)
            if squeeze:
                drop = {ax % len(shape) for ax in axes}
                shape = [d for i, d in enumerate(shape) if i not in drop]
            else:
                for ax in sorted(ax % (len(shape) + len(axes)) for ax in axes):
                    shape.insert(ax, 1)
            return x.reshape(-1, *shape[1:])
        return run


def _target(shape: torch.Size, target: list[int], allow_zero: bool, batch: int) -> list[int]:
    """ONNX Reshape's target (0 copies a dimension, -1 is inferred); a first entry that is
    the batch (the current one, or the one the model was exported for) becomes -1."""
    out = [int(shape[i]) if t == 0 and not allow_zero else t for i, t in enumerate(target)]
    dims = [int(d) for d in shape]
    if out and dims and (out[0] in (dims[0], batch) or (target[0] == 0 and not allow_zero)):
        rest, size = out[1:], int(np.prod(dims[1:]))
        if -1 in rest:
            rest[rest.index(-1)] = size // max(int(np.prod([d for d in rest if d != -1])), 1)
        return [-1, *rest]
    if -1 in out:
        out[out.index(-1)] = int(np.prod(dims)) // max(int(np.prod([d for d in out if d != -1])), 1)
    return out
