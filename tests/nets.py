"""Small models and calibration shared by the conversion tests."""

import torch
from torch import nn

from lavaconv.ann.probe import population_nodes
from lavaconv.ann.stats import collect
from lavaconv.frontend import canonicalize


class ResidualBlock(nn.Module):
    """Identity shortcut, then a strided block with a 1x1-conv shortcut; optionally an avg-pool
    before the flatten and the linear readout. Input (1, 8, 8)."""

    def __init__(self, pool: bool = False):
        super().__init__()
        self.pool = pool
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.short = nn.Conv2d(4, 6, 1, stride=2)
        self.fc = nn.Linear(6 * 4 * 4 // (4 if pool else 1), 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.c2(torch.relu(self.c1(x))) + x)
        x = torch.relu(self.c3(x) + self.short(x))
        return self.fc((nn.functional.avg_pool2d(x, 2) if self.pool else x).flatten(1))


def calibrated(model: nn.Module, x: torch.Tensor, batches: int = 1):
    """Canonical graph of ``model`` and its activation statistics on ``x`` (in ``batches``
    chunks), keyed by population name."""
    gm = canonicalize(model.eval(), tuple(x.shape[1:]))
    names = population_nodes(gm)
    by_node = collect(gm, list(x.chunk(batches)), sorted(set(names.values())))
    return gm, {pop: by_node[node] for pop, node in names.items()}
