"""From an ``nn.Module`` or ``ExportedProgram`` to the verified canonical GraphModule."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule

from lavaconv.errors import LavaconvError
from lavaconv.frontend.fx import check_item_size
from lavaconv.frontend.passes import PASSES, propagate_shapes

VERIFY_ITEMS = 4  # seeded random inputs compared on every load


@contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's deprecation and specialisation warnings while exporting/converting:
    the user cannot act on them, and every load is verified anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def export_module(model: torch.nn.Module, input_shape: tuple[int, ...],
                  label: str) -> ExportedProgram:
    """``torch.export`` of ``model`` in eval mode on one zero item of ``input_shape``."""
    model.eval()
    try:
        return torch.export.export(model, (torch.zeros(1, *input_shape),))
    except Exception as e:  # torch raises many types; the user needs the message
        raise LavaconvError(f"{label}: torch.export failed for input shape {tuple(input_shape)}: "
                            f"{one_line(e)}") from None


def prepare(ep: ExportedProgram, input_shape: tuple[int, ...]) -> GraphModule:
    """Functional ATen graph of ``ep`` with parameters as get_attr, without export's guards;
    fp16/bf16 parameters and buffers become float32 (the graph then computes in float32)."""
    gm = ep.run_decompositions({}).module().float()
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    gm = GraphModule(gm, gm.graph)  # drops the input-shape hooks of ep.module()
    gm.meta["input_shape"] = tuple(input_shape)
    return gm


def canonical_graph(ep: ExportedProgram, input_shape: tuple[int, ...]) -> GraphModule:
    """Run every pass of :mod:`lavaconv.frontend.passes`; the result holds canonical ops only."""
    gm = prepare(ep, input_shape)
    for pass_ in PASSES:
        pass_(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    out = GraphModule(gm, gm.graph)  # keeps only the attributes the graph still reads
    out.meta.update(gm.meta)
    propagate_shapes(out)
    return out


def _single(y, label: str) -> torch.Tensor:
    if isinstance(y, (tuple, list)):
        if len(y) != 1:
            raise LavaconvError(f"{label}: the model returns {len(y)} outputs; lavaconv needs one")
        y = y[0]
    return y


def verify(original: Callable, gm: GraphModule, input_shape: tuple[int, ...], atol: float,
           label: str) -> float:
    """Max |original - canonical| over seeded random inputs; raises above ``atol*max(1,|y|)``.

    The original runs item by item (exports fix batch 1); the canonical graph runs the whole
    batch, which also checks that it is batch-size independent.
    """
    x = torch.randn(VERIFY_ITEMS, *input_shape, generator=torch.Generator().manual_seed(0))
    tail = gm.meta.get("output_activation") or (lambda y: y)
    with torch.no_grad():
        ref = torch.cat([_single(original(x[i:i + 1]), label) for i in range(len(x))])
        try:
            out = tail(_single(gm(x), label))
        except Exception as e:  # a shape baked in for batch 1 would fail here
            raise LavaconvError(f"{label}: the canonical graph fails on a batch of "
                                f"{len(x)}: {one_line(e)}") from None
    if out.shape != ref.shape:
        raise LavaconvError(f"{label}: canonical graph output shape {tuple(out.shape)} differs "
                            f"from the model's {tuple(ref.shape)}")
    diff = (out - ref).abs().max().item()
    bound = atol * max(1.0, ref.abs().max().item())
    if not diff <= bound:  # also catches NaN
        raise LavaconvError(f"{label}: the canonical graph differs from the model by {diff:.3g} "
                            f"(allowed {bound:.3g}); please report this model")
    return diff


def build(ep: ExportedProgram, original: Callable, input_shape: tuple[int, ...], atol: float,
          label: str) -> GraphModule:
    """Canonical graph of ``ep``, verified against ``original``; errors prefixed by ``label``."""
    try:
        gm = canonical_graph(ep, input_shape)
    except LavaconvError as e:
        raise LavaconvError(f"{label}: {e}") from None
    except Exception as e:  # torch failing inside a pass on a construct no pass expected
        raise LavaconvError(f"{label}: cannot bring the model to lavaconv's op set "
                            f"({type(e).__name__}: {one_line(e, 200)}); instead export it "
                            "with torch.export at batch 1 in float32, and please report "
                            "this model") from None
    verify(original, gm, input_shape, atol, label)
    return gm


def canonicalize(model: torch.nn.Module | ExportedProgram, input_shape: tuple[int, ...], *,
                 atol: float = 1e-4) -> GraphModule:
    """Canonical, verified GraphModule of an in-memory model (put in eval mode) or program."""
    input_shape = tuple(input_shape)
    check_item_size(input_shape, 4, "the input")
    with quiet():
        if isinstance(model, ExportedProgram):
            return build(model, model.module(), input_shape, atol, "ExportedProgram")
        label = type(model).__name__
        return build(export_module(model, input_shape, label), model, input_shape, atol, label)
