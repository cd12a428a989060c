"""Read a model file of any supported format into an ``ExportedProgram`` plus a reference."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx import GraphModule

from lavaconv.errors import LavaconvError
from lavaconv.frontend.archive import check_pt2
from lavaconv.frontend.canon import build, export_module, one_line, quiet
from lavaconv.frontend.fx import check_item_size
from lavaconv.frontend.onnx import read_onnx

SAFE_FORMATS = ("a torch.export archive (.pt2), a TorchScript archive (torch.jit.save), "
                "or a state_dict with --arch module.path:callable")


@dataclass
class LoadedModel:
    """The canonical graph of a model file (design.md sec. 1)."""

    graph_module: GraphModule
    input_shape: tuple[int, ...]
    source: str  # "pt2" | "torchscript" | "onnx" | "pickle" | "state_dict"


def load_model(path: str | Path, input_shape: tuple[int, ...], *, arch: str | None = None,
               trust_pickle: bool = False, atol: float = 1e-4) -> LoadedModel:
    """Load, export, canonicalise and verify the model in ``path`` for items of ``input_shape``.

    ``arch`` ("module.path:callable" or "file.py:callable", called with no arguments) builds
    the network a state_dict file belongs to. ``trust_pickle`` allows unpickling a whole
    ``torch.save(model)`` file, which runs code from the file.
    """
    path, input_shape = Path(path), tuple(input_shape)
    if not path.is_file():
        raise LavaconvError(f"{path}: no such file")
    check_item_size(input_shape, 4, f"{path}: the input")
    kind = _format(path)
    if arch is not None and kind != "pickle":
        raise LavaconvError(f"{path}: --arch is for state_dict files; this is a {kind} archive")
    with quiet():
        if kind == "pt2":
            check_pt2(path, trust_pickle)
            ep, original = _read_pt2(path, input_shape)
        elif kind == "torchscript":
            ep, original = _read_torchscript(path, input_shape)
        elif kind == "onnx":
            original = read_onnx(path)
            ep = export_module(original, input_shape, str(path))
        else:
            original, kind = _read_pickle(path, arch, trust_pickle)
            ep = export_module(original, input_shape, str(path))
        gm = build(ep, original, input_shape, atol, str(path))
    return LoadedModel(gm, input_shape, kind)


def _format(path: Path) -> str:
    """"pt2", "torchscript" or "pickle" (torch.save, zip or legacy), from the file's content;
    "onnx" by the file name (an ONNX model is a bare protobuf)."""
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if not zipfile.is_zipfile(path):
        return "pickle"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise LavaconvError(f"{path}: corrupt zip archive ({one_line(e)})") from None
    if any(n.rsplit("/", 1)[-1] == "archive_format" for n in names):
        return "pt2"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def _unreadable(path: Path, kind: str, error: BaseException) -> LavaconvError:
    return LavaconvError(f"{path}: cannot read as {kind} ({type(error).__name__}: "
                         f"{one_line(error, 160)}); "
                         f"expected {SAFE_FORMATS}")


def _read_pt2(path: Path, input_shape: tuple[int, ...]) -> tuple[ExportedProgram, Callable]:
    try:
        ep = torch.export.load(path)
    except Exception as e:  # any failure of the deserialiser means a damaged archive
        raise _unreadable(path, "a torch.export archive", e) from None
    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(user_inputs) != 1:
        raise LavaconvError(f"{path}: the program takes {len(user_inputs)} inputs; "
                            "lavaconv needs exactly one")
    placeholder = next(n for n in ep.graph.nodes if n.name == user_inputs[0].arg.name)
    exported = tuple(placeholder.meta["val"].shape[1:])
    if exported != input_shape:
        raise LavaconvError(f"{path}: the program was exported for items of shape "
                            f"{exported}, not {input_shape}")
    return ep, _reference(ep, placeholder.meta["val"].shape[0])


def _reference(ep: ExportedProgram, batch: int | torch.SymInt) -> Callable:
    """``ep``'s module in float32, taking any batch: a program exported for a fixed batch B
    (or a dynamic one with a lower bound) runs on the items zero-padded to B, rows returned."""
    module = copy.deepcopy(ep.module()).float()  # .float() in place would change ep too
    if isinstance(batch, torch.SymInt):
        bound = ep.range_constraints.get(batch.node.expr)
        batch = max(int(bound.lower), 1) if bound is not None else 1

    def run(x: torch.Tensor) -> torch.Tensor:
        pad = x.new_zeros(max(batch - len(x), 0), *x.shape[1:])
        y = module(torch.cat([x, pad]) if len(pad) else x)
        y = y[0] if isinstance(y, (tuple, list)) and len(y) == 1 else y
        return y[:len(x)]

    return run


def _read_torchscript(path: Path,
                      input_shape: tuple[int, ...]) -> tuple[ExportedProgram, Callable]:
    """TorchScript -> ExportedProgram via TS2EPConverter.

    There is no fallback: torch 2.13's ``torch.export`` refuses ScriptModules outright.
    """
    from torch._export.converter import TS2EPConverter

    try:
        script = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # damaged archive
        raise _unreadable(path, "a TorchScript archive", e) from None
    script.eval().float()  # fp16/bf16 weights: the same canonical graph in float32
    try:
        ep = TS2EPConverter(script, (torch.zeros(1, *input_shape),)).convert()
    except Exception as e:  # wrong input shape or a construct the converter lacks
        raise LavaconvError(f"{path}: converting TorchScript for input shape {input_shape} "
                            f"failed: {one_line(e)}; save the model with torch.export.save "
                            "(.pt2) or as a state_dict instead") from None
    return ep, script


def _read_pickle(path: Path, arch: str | None, trust: bool) -> tuple[torch.nn.Module, str]:
    """A pickled nn.Module (only with ``trust``) or a state_dict loaded into ``arch()``."""
    obj = _torch_load(path, trust)
    if isinstance(obj, torch.nn.Module):
        if arch is not None:
            raise LavaconvError(f"{path}: holds a whole pickled model, not a state_dict; "
                                "drop --arch")
        return obj, "pickle"
    state = _state_dict(obj)
    if state is None:
        raise LavaconvError(f"{path}: holds a {type(obj).__name__}, neither an nn.Module nor "
                            f"a state_dict; expected {SAFE_FORMATS}")
    if arch is None:
        raise LavaconvError(f"{path}: holds a state_dict; name the network it belongs to with "
                            "--arch module.path:callable")
    return _load_state(_build_arch(arch), state, path, arch), "state_dict"


def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(e), re.IGNORECASE)
        if found is None:
            raise _unreadable(path, "a torch.save file", e) from None
        if not trust:
            raise LavaconvError(
                f"{path}: holds pickled objects (first: {found.group(1)}); unpickling runs "
                f"arbitrary code from the file, so it needs --trust-pickle; safer: "
                f"{SAFE_FORMATS}") from None
    except Exception as e:  # not a torch file at all, or a damaged one
        raise _unreadable(path, "a torch.save file", e) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # the pickle's own code failed, e.g. its class cannot be imported
        raise LavaconvError(f"{path}: unpickling failed: {one_line(e)}") from None


def _state_dict(obj) -> dict[str, torch.Tensor] | None:
    """``obj`` itself or its "state_dict" / "model_state_dict" / "model" entry, if all tensors."""
    if not isinstance(obj, dict):
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj:
            return _state_dict(obj[key])
    return None


def _build_arch(arch: str) -> torch.nn.Module:
    """Import "module.path:callable" (or "file.py:callable") and call it with no arguments."""
    module_name, _, attr_path = arch.partition(":")
    if not module_name or not attr_path:
        raise LavaconvError(f"--arch {arch!r}: expected 'module.path:callable'")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise LavaconvError(f"--arch {arch!r}: cannot import {module_name}: {one_line(e)}") \
            from None
    try:
        factory = reduce(getattr, attr_path.split("."), module)
    except AttributeError:
        raise LavaconvError(f"--arch {arch!r}: {module_name} has no attribute {attr_path}") \
            from None
    try:
        model = factory()
    except Exception as e:  # the user's constructor
        raise LavaconvError(f"--arch {arch!r}: calling {attr_path}() failed: {one_line(e)}") \
            from None
    if not isinstance(model, torch.nn.Module):
        raise LavaconvError(f"--arch {arch!r}: {attr_path}() returned a "
                            f"{type(model).__name__}, not an nn.Module")
    return model


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
                arch: str) -> torch.nn.Module:
    expected, given = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise LavaconvError(f"{path}: state_dict does not fit --arch {arch}: missing keys "
                            f"{missing[:5]}, unexpected keys {unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise LavaconvError(f"{path}: state_dict does not fit --arch {arch}: {one_line(e)}") \
            from None
    return model
