"""BatchNorm folding passes (S-ResNet eq. 1): eval BatchNorm becomes a per-channel affine op,
which is then folded into the adjacent conv/linear, into every branch of a residual add, or into
the input side of the convs/linears it feeds."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from lavaconv.frontend.fx import (
    arguments,
    attr,
    broadcast,
    call,
    new_attr,
    nodes,
    propagate_shapes,
    replace,
    shape,
    unsupported,
    where,
)

aten = torch.ops.aten

BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_AFFINE_OPS = (aten.conv2d.default, aten.linear.default)


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Eval BatchNorm as ``scale * x + shift`` per channel (dim 1); folded away before the end."""
    view = (-1,) + (1,) * (x.dim() - 2)
    return x * scale.to(x.dtype).view(view) + shift.to(x.dtype).view(view)


def to_channel_affine(gm: GraphModule) -> None:
    """Eval BatchNorm -> channel_affine(x, scale, shift), scale = g/sqrt(var+eps),
    shift = beta - mean*scale (S-ResNet eq. 1)."""
    for node in nodes(gm, BATCH_NORMS):
        a = arguments(node)
        if a.get("training") or a["running_mean"] is None:
            raise unsupported(node, "BatchNorm in training mode; export the model in eval mode")
        mean, var = (attr(gm, a[k]).double() for k in ("running_mean", "running_var"))
        gamma = attr(gm, a["weight"]).double() if a["weight"] is not None else 1.0
        beta = attr(gm, a["bias"]).double() if a["bias"] is not None else 0.0
        scale = gamma / torch.sqrt(var + a["eps"])
        shift = beta - mean * scale
        args = (a["input"], new_attr(gm, node, f"{node.name}_scale", scale),
                new_attr(gm, node, f"{node.name}_shift", shift))
        affine = call(node, channel_affine, args, where(node))
        if node.target == aten.batch_norm.default:
            replace(node, affine)
            continue
        if any(u.target != operator.getitem or u.args[1] != 0 for u in node.users):
            raise unsupported(node, "batch statistics are used")
        for user in list(node.users):
            replace(user, affine)
        gm.graph.erase_node(node)


def _affine_params(gm: GraphModule, node: Node) -> tuple[torch.Tensor, torch.Tensor]:
    return attr(gm, node.args[1]), attr(gm, node.args[2])


def _rescale(gm: GraphModule, op: Node, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """conv2d/linear ``op`` -> ``scale * op + shift`` per output channel, in its parameters."""
    args = list(op.args) + [None] * (3 - len(op.args))
    w = attr(gm, args[1])
    b = attr(gm, args[2]).double() if args[2] is not None else torch.zeros(w.shape[0]).double()
    args[1] = new_attr(gm, op, f"{args[1].target}_bn", (w * broadcast(scale, w.dim())).to(w))
    args[2] = new_attr(gm, op, f"{args[1].target}_bias", (b * scale + shift).to(w))
    op.args = tuple(args)


def fold_affine_into_producer(gm: GraphModule) -> None:
    """BatchNorm after a conv/linear: into its weights and bias (S-ResNet eq. 1).

    A conv/linear whose output also goes elsewhere (a pre-activation shortcut) is copied: the
    copy is one more synapse from the same source.
    """
    for node in nodes(gm, (channel_affine,)):
        producer = node.args[0]
        if producer.target not in _AFFINE_OPS:
            continue
        if len(producer.users) > 1:
            producer = call(node, producer.target, producer.args, where(producer))
        _rescale(gm, producer, *_affine_params(gm, node))
        replace(node, producer)


def fold_affine_after_add(gm: GraphModule) -> None:
    """BatchNorm after a residual add: scale every branch, add the shift once.

    A conv/linear branch is rescaled in place; an identity branch gets a depthwise 1x1 conv2d
    (groups=C) or a diagonal linear carrying the scale.
    """
    propagate_shapes(gm)
    for node in nodes(gm, (channel_affine,)):
        add = node.args[0]
        if add.target != aten.add.Tensor or len(add.users) != 1:
            continue
        scale, shift = _affine_params(gm, node)
        _scale_branches(gm, add, scale)
        _add_shift(gm, add, shift)
        replace(node, add)


def _owned(add: Node, index: int) -> bool:
    """Whether ``add.args[index]`` feeds only this input of ``add`` (safe to edit in place)."""
    branch = add.args[index]
    return len(branch.users) == 1 and add.args[1 - index] is not branch


def _scale_branches(gm: GraphModule, add: Node, scale: torch.Tensor) -> None:
    args = list(add.args)
    for i, branch in enumerate(add.args):
        owned = _owned(add, i)
        if owned and branch.target in _AFFINE_OPS:
            _rescale(gm, branch, scale, torch.zeros_like(scale))
        elif owned and branch.target == aten.add.Tensor:
            _scale_branches(gm, branch, scale)
        elif branch.op == "get_attr":
            value = attr(gm, branch)
            args[i] = new_attr(gm, add, f"{branch.target}_bn",
                                (value * broadcast(scale, len(shape(add)) - 1)).to(value))
        else:
            args[i] = _scaled_identity(gm, add, branch, scale)
    add.args = tuple(args)


def _scaled_identity(gm: GraphModule, before: Node, x: Node, scale: torch.Tensor) -> Node:
    channels = scale.numel()
    if len(shape(x)) == 4:
        w = new_attr(gm, before, f"{x.name}_bn_weight", scale.float().view(channels, 1, 1, 1))
        args = (x, w, None, [1, 1], [0, 0], [1, 1], channels)
        return call(before, aten.conv2d.default, args, where(before))
    w = new_attr(gm, before, f"{x.name}_bn_weight", torch.diag(scale.float()))
    return call(before, aten.linear.default, (x, w, None), where(before))


def _add_shift(gm: GraphModule, add: Node, shift: torch.Tensor) -> None:
    """Add ``shift`` to the bias of one branch of ``add`` (every branch is owned by now)."""
    branch = add.args[0]
    if branch.target == aten.add.Tensor:
        _add_shift(gm, branch, shift)
    elif branch.op == "get_attr":
        value = attr(gm, branch)
        new = new_attr(gm, add, f"{branch.target}_shift",
                        (value + broadcast(shift, len(shape(add)) - 1)).to(value))
        add.args = (new, add.args[1])
    else:
        _rescale(gm, branch, torch.ones_like(shift), shift)


def fold_affine_into_consumer(gm: GraphModule) -> None:
    """BatchNorm feeding only convs/linears: into their input side.

    conv(s*x + t) = conv_{W*s}(x) + conv_W(t on the H x W grid, zero padding): with padding the
    second term varies near the border, so it becomes a constant (C, H, W) map added after the
    bias-free conv; without padding it is a plain per-channel bias.
    """
    propagate_shapes(gm)
    for node in nodes(gm, (channel_affine,)):
        users = list(node.users)
        if not users or any(u.target not in _AFFINE_OPS or u.args[0] is not node
                            for u in users):
            continue
        scale, shift = _affine_params(gm, node)
        for user in users:
            fold = _fold_into_conv if user.target == aten.conv2d.default else _fold_into_linear
            replace(user, fold(gm, user, node.args[0], scale, shift))
        gm.graph.erase_node(node)


def _fold_into_linear(gm: GraphModule, op: Node, x: Node, scale: torch.Tensor,
                      shift: torch.Tensor) -> Node:
    w = attr(gm, op.args[1]).double()
    b = attr(gm, op.args[2]).double() if len(op.args) > 2 and op.args[2] is not None else 0.0
    weight = new_attr(gm, op, f"{op.args[1].target}_bn", (w * scale).float())
    bias = new_attr(gm, op, f"{op.args[1].target}_bn_bias", (w @ shift + b).float())
    return call(op, aten.linear.default, (x, weight, bias), where(op))


def _fold_into_conv(gm: GraphModule, op: Node, x: Node, scale: torch.Tensor,
                    shift: torch.Tensor) -> Node:
    _, w_node, b_node, stride, padding, dilation, groups = op.args
    w = attr(gm, w_node).double()
    b = attr(gm, b_node).double() if b_node is not None else None
    out_c, in_per_group = w.shape[:2]
    scale_in = scale.view(groups, 1, in_per_group, 1, 1)
    w_new = (w.view(groups, out_c // groups, *w.shape[1:]) * scale_in).view_as(w)
    grid = shift.view(1, -1, 1, 1).expand(1, -1, *shape(x)[2:])
    bias_map = F.conv2d(grid, w, b, stride, padding, dilation, groups)[0]
    weight = new_attr(gm, op, f"{w_node.target}_bn", w_new.float())
    if not any(padding):
        bias = new_attr(gm, op, f"{w_node.target}_bn_bias", bias_map[:, 0, 0].float())
        return call(op, aten.conv2d.default, (x, weight, bias, *op.args[3:]), where(op))
    conv = call(op, aten.conv2d.default, (x, weight, None, *op.args[3:]), where(op))
    bias = new_attr(gm, op, f"{w_node.target}_bn_bias_map", bias_map.float())
    return call(op, aten.add.Tensor, (conv, bias), where(op))


def affine_into_parts(gm: GraphModule) -> None:
    """BatchNorm after a channel concatenation: one affine per part (its channel range);
    after an avg-pool without padding: before it (both per-channel linear maps commute)."""
    changed = True
    while changed:
        changed = False
        propagate_shapes(gm)
        for node in nodes(gm, (channel_affine,)):
            src = node.args[0]
            scale, shift = _affine_params(gm, node)
            if src.target == aten.cat.default and len(src.users) == 1:
                parts, lo = [], 0
                for part in src.args[0]:
                    n = shape(part)[1]
                    args = (part, new_attr(gm, src, f"{node.name}_scale", scale[lo:lo + n]),
                            new_attr(gm, src, f"{node.name}_shift", shift[lo:lo + n]))
                    parts.append(call(src, channel_affine, args, where(node)))
                    lo += n
                src.args = (parts, *src.args[1:])
            elif (src.target == aten.avg_pool2d.default and len(src.users) == 1
                  and not any(arguments(src)["padding"])):
                inner = call(src, channel_affine, (src.args[0], *node.args[1:]), where(node))
                src.args = (inner, *src.args[1:])
            else:
                continue
            replace(node, src)
            changed = True


def affine_to_conv(gm: GraphModule) -> None:
    """Any BatchNorm left (e.g. after a ReLU, or after a residual add that also feeds a
    shortcut): a depthwise 1x1 conv2d (or a diagonal linear) carrying scale and shift, exact;
    the converter composes it with the linear ops around it."""
    propagate_shapes(gm)
    for node in nodes(gm, (channel_affine,)):
        scale, shift = _affine_params(gm, node)
        x = node.args[0]
        bias = new_attr(gm, node, f"{node.name}_shift", shift.float())
        if len(shape(x)) == 4:
            w = new_attr(gm, node, f"{node.name}_scale", scale.float().view(-1, 1, 1, 1))
            args = (x, w, bias, [1, 1], [0, 0], [1, 1], scale.numel())
            replace(node, call(node, aten.conv2d.default, args, where(node)))
        else:
            w = new_attr(gm, node, f"{node.name}_scale", torch.diag(scale.float()))
            replace(node, call(node, aten.linear.default, (x, w, bias), where(node)))
