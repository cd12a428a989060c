"""torch.fx passes from an exported ATen graph to lavaconv's canonical op set (design.md sec. 1).

Every pass is one function ``pass_(gm) -> None`` that matches one pattern and edits
``gm.graph`` in place; :data:`PASSES` lists them in the order the front-end runs them. A pass
that meets something it cannot express exactly raises :class:`LavaconvError` naming the op and
where it sits in the model (``node.meta["lavaconv_where"]``). Passes that need tensor shapes
run the graph once on zeros of ``gm.meta["input_shape"]`` (batch 1).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial

import torch
from torch.fx import GraphModule, Node

from lavaconv.errors import LavaconvError
from lavaconv.frontend.batchnorm import (
    BATCH_NORMS,
    affine_into_parts,
    affine_to_conv,
    fold_affine_after_add,
    fold_affine_into_consumer,
    fold_affine_into_producer,
    to_channel_affine,
)
from lavaconv.frontend.fx import (
    arguments,
    attr,
    call,
    check_item_size,
    is_assert,
    new_attr,
    nodes,
    op_name,
    propagate_shapes,
    replace,
    shape,
    unsupported,
    where,
)

aten = torch.ops.aten

CLIPPED = aten.hardtanh.default  # hardtanh(x, 0, a): a ReLU clipped at a > 0 (ReLU6)
ACTIVATIONS = (aten.relu.default, CLIPPED)  # each becomes one IF population
CANONICAL = {aten.conv2d.default, aten.linear.default, aten.relu.default, CLIPPED,
             aten.max_pool2d.default, aten.avg_pool2d.default, aten.add.Tensor,
             aten.flatten.using_ints, aten.cat.default}
_NOOPS = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
          aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default,
          aten.lift_fresh_copy.default}
_RELUS = {aten.relu.default, aten.relu_.default, aten.clamp_min.default, aten.clamp.default,
          aten.threshold.default, aten.hardtanh.default, aten.hardtanh_.default,
          aten.clamp_max.default, aten.relu6.default}
_LOG_SOFTMAX = {aten.log_softmax.int, aten._log_softmax.default}
_SOFTMAX = {aten.softmax.int, aten._softmax.default}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
             aten.flatten.using_ints, aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims,
             aten.unsqueeze.default}
_SHAPED = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_CONVS = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
_ADAPTIVE = {aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default}
_ACCEPTED = (CANONICAL | _NOOPS | _RELUS | _LOG_SOFTMAX | _SOFTMAX | _RESHAPES | BATCH_NORMS
             | _CONVS | _ADAPTIVE | {aten.addmm.default, aten.mm.default, aten.mean.dim,
                                     aten.max_pool2d_with_indices.default, operator.getitem})


# ---------------------------------------------------------------- naming and checks

def name_places(gm: GraphModule) -> None:
    """``meta["lavaconv_where"]``: module path and class, or the source line of a functional op."""
    for node in gm.graph.nodes:
        node.meta["lavaconv_where"] = _describe(node)


def _describe(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path, cls = list(stack.values())[-1] if stack else ("", "")
    cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    short = cls.rsplit(".", 1)[-1]
    lines = [ln.strip() for ln in (node.meta.get("stack_trace") or "").splitlines() if ln.strip()]
    line = f": {lines[-1]}" if lines and not cls.startswith("torch.nn.") else ""
    if path:
        return f"{path} ({short}){line}"
    owners = [a.target.rsplit(".", 1)[0] for a in node.all_input_nodes
              if a.op == "get_attr" and "." in a.target]
    if owners:  # TorchScript graphs carry no module stack: name the parameter's owner
        return owners[0]
    return f"{short}.forward{line}" if line else f"graph node {node.name}"


def resolve_batch(gm: GraphModule) -> None:
    """Shape arguments that carry the batch (an exported batch of 8, a dynamic batch,
    ``x.size(0)`` / ``x.shape[0]`` in TorchScript) -> ``-1``; the batch-size arithmetic and its
    runtime asserts, then unused, are removed. Shapes come from export's fake tensors."""
    batch = next(n for n in gm.graph.nodes if n.op == "placeholder").meta["val"].shape[0]
    for node in nodes(gm, _SHAPED):
        before, after = node.args[0].meta.get("val"), node.meta.get("val")
        if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
            continue
        if (after.dim() and _same(after.shape[0], batch) and _same(before.shape[0], batch)
                and all(isinstance(d, int) for d in after.shape[1:])):
            node.args = (node.args[0], [-1, *after.shape[1:]], *node.args[2:])
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "call_function" and not node.users and (
                is_assert(node.target) or not isinstance(node.meta.get("val"), torch.Tensor)):
            gm.graph.erase_node(node)
    for node in gm.graph.nodes:
        if node.op == "call_function" and op_name(node.target).startswith("aten.sym_"):
            raise unsupported(node, "the batch size is used other than as the first dimension "
                                    "of a view/reshape")


def _same(a: int | torch.SymInt, b: int | torch.SymInt) -> bool:
    return str(a) == str(b)


def check_sizes(gm: GraphModule) -> None:
    """Refuse, before any pass runs the graph, activations of one item that would not fit in
    memory (their shapes come from export's fake tensors, nothing is allocated)."""
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "call_function" and isinstance(val, torch.Tensor):
            dims = [d for d in val.shape[1:] if isinstance(d, int)]  # one item
            check_item_size(dims, val.element_size(), f"the output of {where(node)}")


def fold_constants(gm: GraphModule) -> None:
    """Evaluate ops whose inputs are all parameters/constants (e.g. ``permute(weight)``)."""
    for node in list(gm.graph.nodes):
        if (node.op != "call_function" or is_assert(node.target)
                or any(a.op != "get_attr" for a in node.all_input_nodes)):
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: attr(gm, a))
        value = node.target(*args, **kwargs)
        if isinstance(value, torch.Tensor):
            hint = "_".join([a.target for a in node.all_input_nodes[:1]] + [node.name])
            replace(node, new_attr(gm, node, hint, value))


def check_supported(gm: GraphModule) -> None:
    """One input, one output tensor, and only ops some pass below knows."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise LavaconvError(f"the model takes {len(inputs)} inputs; lavaconv needs exactly one")
    outputs = _output(gm).args[0]
    if isinstance(outputs, (tuple, list)) and len(outputs) != 1:
        raise LavaconvError(f"the model returns {len(outputs)} outputs; lavaconv needs one tensor")
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_method") or (
                node.op == "call_function" and node.target not in _ACCEPTED
                and not is_assert(node.target)):
            raise unsupported(node)


def _output(gm: GraphModule) -> Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def _output_value(gm: GraphModule) -> Node:
    value = _output(gm).args[0]
    return value[0] if isinstance(value, (tuple, list)) else value


def drop_noops(gm: GraphModule) -> None:
    """Dropout (eval), clone, alias, detach, contiguous: identity; ``_assert_*``: removed."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _NOOPS:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif is_assert(node.target) and not node.users:
            gm.graph.erase_node(node)


def strip_output_activation(gm: GraphModule) -> None:
    """Softmax / log-softmax over the classes at the output: removed (argmax is unchanged).

    ``gm.meta["output_activation"]`` keeps it so verification can re-apply it.
    """
    node = _output_value(gm)
    if node.op != "call_function" or node.target not in _SOFTMAX | _LOG_SOFTMAX:
        return
    propagate_shapes(gm)
    dim = node.args[1]
    if len(shape(node)) != 2 or dim not in (1, -1):
        raise unsupported(node, f"over dim {dim} of a {len(shape(node))}-d tensor")
    fn = torch.log_softmax if node.target in _LOG_SOFTMAX else torch.softmax
    gm.meta["output_activation"] = partial(fn, dim=1)
    replace(node, node.args[0])


# ---------------------------------------------------------------- op spellings

def to_relu(gm: GraphModule) -> None:
    """relu_, clamp_min(x, 0), clamp(x, min=0), threshold(x, 0, 0) -> relu; clamp(x, 0, a),
    hardtanh(x, 0, a) (ReLU6), clamp_max(relu(x), a) -> hardtanh(x, 0, a), a > 0."""
    for node in nodes(gm, _RELUS - {aten.relu.default, CLIPPED}) + nodes(gm, (CLIPPED,)):
        a = arguments(node)
        params = {k: v for k, v in a.items() if k != "self"}
        if node.target == aten.relu6.default:
            params = {"min": 0, "max": 6}
        if params in ({}, {"min": 0, "max": None}, {"min": 0}, {"threshold": 0, "value": 0}):
            replace(node, call(node, aten.relu.default, (a["self"],), where(node)))
            continue
        low, high = params.get("min", params.get("min_val")), params.get("max", params.get(
            "max_val"))
        if node.target == aten.clamp_max.default:
            low = 0 if a["self"].target in ACTIVATIONS else None
        if low != 0 or not isinstance(high, (int, float)) or high <= 0:
            raise unsupported(node, ", ".join(f"{k}={v}" for k, v in params.items())
                              + "; only ReLU and ReLU clipped to [0, a] convert")
        x = a["self"].args[0] if a["self"].target == aten.relu.default else a["self"]
        if x.target == CLIPPED:  # clip of a clip
            x, high = x.args[0], min(high, x.args[2])
        replace(node, call(node, CLIPPED, (x, 0.0, float(high)), where(node)))


def to_conv2d(gm: GraphModule) -> None:
    """convolution / conv2d(padding='same') -> conv2d with all seven arguments explicit."""
    for node in nodes(gm, _CONVS):
        a = arguments(node)
        if a.get("transposed"):
            raise unsupported(node, "transposed convolution")
        if len(a["stride"]) != 2:
            raise unsupported(node, f"{len(a['stride'])}-d convolution")
        if a["weight"].op != "get_attr":
            raise unsupported(node, "weight computed from the input")
        padding = a["padding"]
        if isinstance(padding, str):
            padding = _explicit_padding(gm, node, padding, a["dilation"])
        args = (a["input"], a["weight"], a["bias"], list(a["stride"]), list(padding),
                list(a["dilation"]), a["groups"])
        replace(node, call(node, aten.conv2d.default, args, where(node)))


def _explicit_padding(gm: GraphModule, node: Node, padding: str, dilation: list) -> list[int]:
    if padding == "valid":
        return [0, 0]
    kernel = attr(gm, node.args[1]).shape[2:]
    total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    if any(t % 2 for t in total):
        raise unsupported(node, "padding='same' that pads unevenly")
    return [t // 2 for t in total]


def to_linear(gm: GraphModule) -> None:
    """addmm(b, x, W^T) / mm(x, W^T) -> linear(x, W, b); linear must see a (N, features) input."""
    for node in nodes(gm, (aten.addmm.default, aten.mm.default)):
        a = arguments(node)
        weight_t = a["mat2"]
        x, bias = (a["mat1"], a["self"]) if node.target == aten.addmm.default else (a["self"], None)
        if weight_t.op != "get_attr" or (bias is not None and bias.op != "get_attr"):
            raise unsupported(node, "product of two activations")
        if a.get("beta", 1) != 1 or a.get("alpha", 1) != 1:
            raise unsupported(node, "scaled addmm")
        weight = new_attr(gm, node, f"{weight_t.target}_t", attr(gm, weight_t).t())
        if bias is not None:
            bias = new_attr(gm, node, bias.target, attr(gm, bias).reshape(-1))
        replace(node, call(node, aten.linear.default, (x, weight, bias), where(node)))
    propagate_shapes(gm)
    for node in nodes(gm, (aten.linear.default,)):
        if len(shape(node.args[0])) != 2:
            raise unsupported(node, f"applied to a {len(shape(node.args[0]))}-d tensor; "
                                    "flatten it first")


def bias_add_into_linear(gm: GraphModule) -> None:
    """linear(x, W) + b (b a constant vector) -> linear(x, W, b)."""
    for node in nodes(gm, (aten.linear.default,)):
        users = list(node.users)
        if (len(node.args) > 2 and node.args[2] is not None) or len(users) != 1:
            continue
        add = users[0]
        if add.target != aten.add.Tensor or len(add.args) != 2 or add.kwargs:
            continue
        other = add.args[1] if add.args[0] is node else add.args[0]
        out_features = attr(gm, node.args[1]).shape[0]
        if (not isinstance(other, Node) or other.op != "get_attr"
                or attr(gm, other).numel() != out_features):
            continue
        bias = new_attr(gm, node, other.target, attr(gm, other).reshape(-1))
        node.args = (node.args[0], node.args[1], bias)
        replace(add, node)


def to_max_pool2d(gm: GraphModule) -> None:
    """max_pool2d_with_indices + getitem 0 -> max_pool2d."""
    for node in nodes(gm, (aten.max_pool2d_with_indices.default,)):
        if any(u.target != operator.getitem or u.args[1] != 0 for u in node.users):
            raise unsupported(node, "pooling indices are used")
        pool = call(node, aten.max_pool2d.default, node.args, where(node))
        for user in list(node.users):
            replace(user, pool)
        gm.graph.erase_node(node)


def to_avg_pool2d(gm: GraphModule) -> None:
    """adaptive_avg_pool2d (output divides input) and mean over H,W -> avg_pool2d."""
    propagate_shapes(gm)
    for node in nodes(gm, _ADAPTIVE):
        x, size = node.args[0], shape(node.args[0])[-2:]
        out = [s if o is None else o for o, s in zip(node.args[1], size, strict=True)]
        if any(s % o for s, o in zip(size, out, strict=True)):
            raise unsupported(node, f"output {out[0]}x{out[1]} does not divide the input "
                                    f"{size[0]}x{size[1]}")
        kernel = [s // o for s, o in zip(size, out, strict=True)]
        pool = x if kernel == [1, 1] else call(node, aten.avg_pool2d.default,
                                                 (x, kernel, kernel), where(node))
        replace(node, pool)
    for node in nodes(gm, (aten.mean.dim,)):
        a = arguments(node)
        x = a["self"]
        ndim = len(shape(x))
        dims = sorted(d % ndim for d in a["dim"] or range(ndim))
        if ndim != 4 or dims != [2, 3]:
            raise unsupported(node, f"mean over dims {a['dim']} of a {ndim}-d tensor")
        size = list(shape(x)[2:])
        pool = call(node, aten.avg_pool2d.default, (x, size, size), where(node))
        if not a["keepdim"]:
            pool = call(node, aten.flatten.using_ints, (pool, 1, -1), where(node))
        replace(node, pool)


def to_flatten(gm: GraphModule) -> None:
    """Chains of view/reshape/flatten/squeeze that flatten all non-batch dims -> flatten(x, 1, -1).

    A chain that leaves the shape unchanged is removed; any other reshape is refused.
    """
    propagate_shapes(gm)
    ends = [n for n in nodes(gm, _RESHAPES) if not all(u.target in _RESHAPES for u in n.users)]
    for end in ends:
        root = end
        while root.op == "call_function" and root.target in _RESHAPES:
            root = root.args[0]
        before, after = shape(root), shape(end)
        if after == before:
            end.replace_all_uses_with(root)
        elif len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
            end.replace_all_uses_with(
                call(end, aten.flatten.using_ints, (root, 1, -1), where(end)))
        else:
            raise unsupported(end, f"reshape {before} -> {after}; only flattening all "
                                   "non-batch dims is supported")
    for node in reversed(nodes(gm, _RESHAPES)):
        if not node.users:
            gm.graph.erase_node(node)


# ---------------------------------------------------------------- ReLU and pooling order

def activation_into_parts(gm: GraphModule) -> None:
    """relu / clip / max-pool of a channel concatenation -> concatenation of each part's
    (per-channel ops): the populations sit side by side, each consumer reads its range."""
    changed = True
    while changed:
        changed = False
        for node in nodes(gm, (*ACTIVATIONS, aten.max_pool2d.default)):
            cat = node.args[0]
            if cat.target != aten.cat.default or len(cat.users) != 1:
                continue
            parts = [call(cat, node.target, (p, *node.args[1:]), where(node))
                     for p in cat.args[0]]
            cat.args = (parts, *cat.args[1:])
            replace(node, cat)
            changed = True


def relu_before_max_pool(gm: GraphModule) -> None:
    """relu(max_pool2d(z)) -> max_pool2d(relu(z)) (max and a monotone ReLU or clip commute)."""
    changed = True
    while changed:
        changed = False
        for relu in nodes(gm, ACTIVATIONS):
            pool = relu.args[0]
            if pool.target != aten.max_pool2d.default:
                continue
            inner = call(pool, relu.target, (pool.args[0], *relu.args[1:]), where(relu))
            replace(relu, call(pool, aten.max_pool2d.default, (inner, *pool.args[1:]),
                                 where(pool)))
            if not pool.users:
                gm.graph.erase_node(pool)
            changed = True


def drop_double_relu(gm: GraphModule) -> None:
    """relu(relu(x)) -> relu(x); relu(clip(x)) -> clip(x)."""
    for relu in nodes(gm, (aten.relu.default,)):
        if relu.args[0].target in ACTIVATIONS:
            replace(relu, relu.args[0])


def _non_negative(node: Node) -> bool:
    if node.target in ACTIVATIONS:
        return True
    if node.target == aten.cat.default:
        return all(_non_negative(p) for p in node.args[0])
    return node.target in (aten.max_pool2d.default, aten.avg_pool2d.default) and _non_negative(
        node.args[0])


def _feeds_dense(node: Node) -> bool:
    """Whether every use of ``node`` is (through flattens) a linear or the output."""
    return all(u.target == aten.linear.default or u.op == "output" or (
        u.target == aten.flatten.using_ints and _feeds_dense(u)) for u in node.users)


def relu_after_avg_pool(gm: GraphModule) -> None:
    """avg_pool2d of non-negative values that feeds more than linears (via flatten) or the
    output: a ReLU after it (exact) makes it a relay population; the rest compose into one
    Dense synapse in convert."""
    for pool in nodes(gm, (aten.avg_pool2d.default,)):
        if _feeds_dense(pool) or not _non_negative(pool.args[0]):
            continue
        relu = call(pool.next, aten.relu.default, (pool,), where(pool))
        pool.replace_all_uses_with(relu, delete_user_cb=partial(operator.is_not, relu))


def check_canonical(gm: GraphModule) -> None:
    """Only the canonical ops of design.md sec. 1 remain; add takes two tensors; conv and
    linear parameters are get_attr constants; cat joins along the channels."""
    propagate_shapes(gm)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target not in CANONICAL:
            raise unsupported(node)
        if node.target == aten.cat.default:
            dim = arguments(node)["dim"] % len(shape(node))
            if dim != 1:
                raise unsupported(node, f"concatenation along dim {dim}; only along the "
                                        "channels (dim 1) converts")
        if node.target == aten.add.Tensor and (
                node.kwargs or not all(isinstance(a, Node) for a in node.args)):
            raise unsupported(node, "add of a scalar or scaled add")
        if node.target in (aten.conv2d.default, aten.linear.default) and any(
                isinstance(a, Node) and a.op != "get_attr" for a in node.args[1:3]):
            raise unsupported(node, "weights computed from the input")


def flat_attributes(gm: GraphModule) -> None:
    """Every get_attr reads a top-level buffer (``fc.weight`` -> ``fc_weight``), so that
    ``getattr(gm, node.target)`` works for every consumer."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and "." in node.target:
            replace(node, new_attr(gm, node, node.target, attr(gm, node)))


PASSES: tuple[Callable[[GraphModule], None], ...] = (
    name_places, resolve_batch, check_sizes, fold_constants, check_supported, drop_noops,
    strip_output_activation, to_relu, to_conv2d, to_linear, bias_add_into_linear, to_max_pool2d,
    to_avg_pool2d, to_flatten, to_channel_affine, affine_into_parts,
    fold_affine_into_producer, fold_affine_after_add, fold_affine_into_consumer, affine_to_conv,
    activation_into_parts, relu_before_max_pool, drop_double_relu, relu_after_avg_pool,
    check_canonical, flat_attributes,
)
