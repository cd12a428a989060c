"""Graph-editing helpers shared by the front-end passes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp

from lavaconv.errors import LavaconvError

MAX_ITEM_BYTES = 1 << 30  # one item's largest tensor (the input or an activation) lavaconv takes
SUPPORTED = ("Conv2d, Linear, ReLU, ReLU6/Hardtanh(0, a), MaxPool2d, AvgPool2d, "
             "AdaptiveAvgPool2d, mean over H,W, BatchNorm, residual add, torch.cat along "
             "channels, flatten, Dropout/Identity, softmax at the output")


def check_item_size(dims: Sequence[int], itemsize: int, what: str) -> None:
    """Refuse, before anything allocates it, a tensor of one item over MAX_ITEM_BYTES."""
    size = math.prod(dims) * itemsize
    if size > MAX_ITEM_BYTES:
        raise LavaconvError(f"{what} of shape {tuple(dims)} needs {size / 2**30:.3g} GiB per "
                            f"item, over lavaconv's limit of {MAX_ITEM_BYTES / 2**30:g} GiB per "
                            "tensor: use smaller items or a smaller model")


def op_name(target: Any) -> str:
    """``aten.sigmoid`` for an ATen overload, the function's name otherwise."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target.overloadpacket)
    return getattr(target, "__name__", str(target))


def where(node: Node) -> str:
    return node.meta.get("lavaconv_where", node.name)


def unsupported(node: Node, detail: str = "") -> LavaconvError:
    detail = f" ({detail})" if detail else ""
    return LavaconvError(f"unsupported op {op_name(node.target)}{detail} at {where(node)}; "
                         f"supported: {SUPPORTED}; instead, rebuild that part from these "
                         "(a ReLU for other activations) or leave it out of the exported model")


def arguments(node: Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out


def attr(gm: GraphModule, node: Node) -> torch.Tensor:
    return reduce(getattr, node.target.split("."), gm)


def new_attr(gm: GraphModule, before: Node, hint: str, value: torch.Tensor) -> Node:
    """Register ``value`` as a buffer of ``gm`` and read it with a get_attr before ``before``."""
    name = base = re.sub(r"\W", "_", hint)
    for i in range(1, 1 << 30):
        if not hasattr(gm, name):
            break
        name = f"{base}_{i}"
    gm.register_buffer(name, value.detach().clone())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def call(before: Node, target: Callable, args: tuple, place: str) -> Node:
    with before.graph.inserting_before(before):
        node = before.graph.call_function(target, args)
    node.meta["lavaconv_where"] = place
    return node


def replace(old: Node, new: Node) -> None:
    new.meta.setdefault("lavaconv_where", where(old))
    old.replace_all_uses_with(new)
    old.graph.erase_node(old)


def nodes(gm: GraphModule, targets: set | tuple) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]


def propagate_shapes(gm: GraphModule) -> None:
    gm.recompile()
    ShapeProp(gm).propagate(torch.zeros(1, *gm.meta["input_shape"]))


def shape(node: Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def is_assert(target: Any) -> bool:
    return op_name(target).rsplit(".", 1)[-1].startswith("_assert")


def broadcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to multiply a tensor of ``ndim`` dims along dim 0."""
    return v.view(-1, *([1] * (ndim - 1)))
