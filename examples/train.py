"""Train the bundled examples on Fashion-MNIST and export them.

    .venv/bin/python -m examples.train [--epochs 4] [--only vgg|resnet]
    .venv/bin/python -m examples.train --export-batch 8 --only vgg

Writes examples/{vgg,resnet}_fmnist.pt2 (torch.export) and *_state_dict.pt (for --arch);
``--export-batch B`` only re-exports the saved state_dicts for batch size B, as
``*_fmnist_bB.pt2`` (test data: a program whose view/reshape carry the batch).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from examples.models import ResNetStyle, VGGStyle
from lavaconv.ann.data import Dataset, batches, load_dataset

HERE = Path(__file__).parent
MODELS = {"vgg": VGGStyle, "resnet": ResNetStyle}


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(torch.from_numpy(xb)).argmax(1).numpy() == yb).sum())
                      for xb, yb in batches(x, y, 1000))
    return correct / len(y)


def export(model: nn.Module, path: Path, x: np.ndarray, batch: int = 1) -> None:
    """Save ``model`` (eval mode) with torch.export for ``batch`` items and check the reloaded
    copy agrees on ``x`` (``len(x)`` a multiple of ``batch``), fed ``batch`` items at a time."""
    model.eval()
    torch.export.save(torch.export.export(model, (torch.zeros(batch, 1, 28, 28),)), path)
    program = torch.export.load(path).module()
    with torch.no_grad():
        want = model(torch.from_numpy(x))
        got = torch.cat([program(torch.from_numpy(x[i:i + batch]))
                         for i in range(0, len(x), batch)])
    diff = float((want - got).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"{path}: reloaded program differs from the model by {diff}")
    print(f"{path.name}: reload matches the model (max |diff| {diff:.1e})", flush=True)


def train(name: str, epochs: int, data: Dataset) -> None:
    """Adam + one-cycle schedule, batch 128, fixed seeds; prints test accuracy each epoch."""
    torch.manual_seed(0)
    model = MODELS[name]()
    x, y = torch.from_numpy(data.x_calib), torch.from_numpy(data.y_calib)
    opt = torch.optim.Adam(model.parameters(), weight_decay=1e-4)  # lr: OneCycleLR
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // 128):
            idx = order[i * 128:(i + 1) * 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"{name} epoch {epoch + 1}: test accuracy "
              f"{100 * accuracy(model, data.x_eval, data.y_eval):.2f} %, "
              f"{time.time() - start:.0f} s", flush=True)
    export(model, HERE / f"{name}_fmnist.pt2", data.x_eval[:64])
    torch.save(model.state_dict(), HERE / f"{name}_state_dict.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--only", choices=list(MODELS))
    ap.add_argument("--export-batch", type=int, help="only re-export the state_dicts")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.export_batch:
        x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)).numpy()
        for name in [args.only] if args.only else list(MODELS):
            model = MODELS[name]()
            model.load_state_dict(torch.load(HERE / f"{name}_state_dict.pt", weights_only=True))
            export(model, HERE / f"{name}_fmnist_b{args.export_batch}.pt2", x,
                   args.export_batch)
        return
    data = load_dataset("fashion-mnist")  # calibration part = the 60k training images
    for name in [args.only] if args.only else list(MODELS):
        train(name, args.epochs, data)


if __name__ == "__main__":
    main()
