"""Scale-out on PyTorch's own distributed runtime (``torchrun``), gloo on CPU, nccl on GPUs.

Work is sharded by batch: batch ``i`` of a fixed batch size goes to rank ``i % world``, so every
item sees exactly the batch (and the Poisson seed) it would see in a single process, and the
all-reduced results equal the single-process ones. Only rank 0 writes outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1); else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get(
            "LAVACONV_BACKEND", "gloo") == "nccl" else "gloo"
        if backend == "nccl":  # collectives run on this rank's GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def device(choice: str) -> str:
    """``cpu``, ``cuda`` or ``auto`` (a GPU when present); under torchrun, this rank's GPU."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            from lavaconv.errors import LavaconvError

            raise LavaconvError("--device cuda: no CUDA device is available (use cpu or auto)")
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return choice


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """This rank's batches as (start, stop) of a fixed split of ``n`` items."""
    rank, size = world()
    for i, start in enumerate(range(0, n, batch_size)):
        if i % size == rank:
            yield start, min(start + batch_size, n)


def batches(x: np.ndarray, size: int, device: str | torch.device = "cpu"
            ) -> Iterator[tuple[int, torch.Tensor]]:
    """This rank's share of fixed batches of ``x`` as (start, tensor on ``device``)."""
    for start, stop in shard(len(x), size):
        yield start, torch.from_numpy(np.ascontiguousarray(x[start:stop])).to(device)


def all_sum(values: dict) -> dict:
    """Element-wise sum over ranks of a dict of numbers or arrays (same keys on every rank)."""
    rank, size = world()
    if size == 1:
        return values
    keys = sorted(values, key=str)
    flat = [np.asarray(values[k], dtype=np.float64) for k in keys]
    buf = torch.from_numpy(np.concatenate([f.ravel() for f in flat]) if flat else np.zeros(0))
    if dist.get_backend() == "nccl":  # nccl reduces GPU tensors only
        buf = buf.to(f"cuda:{torch.cuda.current_device()}")
    dist.all_reduce(buf)
    buf = buf.cpu()
    out, offset = {}, 0
    for k, f in zip(keys, flat, strict=True):
        out[k] = buf[offset:offset + f.size].numpy().reshape(f.shape)
        out[k] = out[k].item() if f.ndim == 0 else out[k]
        offset += f.size
    return out


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    rank, size = world()
    if size == 1:
        return [obj]
    gathered = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered
