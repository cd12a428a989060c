"""What one engine run produced (shared by the IF engine and the sigma-delta engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SimResult:
    """What one simulation produced for a batch of items."""

    readout: dict[int, torch.Tensor]  # checkpoint t -> score (B, n_out) of Readout.mode
    spike_counts: dict[str, torch.Tensor]  # node -> spike events per neuron over all T
    spikes_at: dict[int, dict[str, float]] = field(default_factory=dict)  # t -> node -> events
    saturated: dict[str, int] = field(default_factory=dict)  # int mode: neuron-steps clipped
    readout_input: torch.Tensor | None = None  # (T, B, n_out): what the readout adds each step
    counts_at: dict[int, dict[str, torch.Tensor]] | None = None  # t -> node -> per-neuron
    # events in steps [0, t) (only when simulate is asked for them)
    input_counts: dict[int, torch.Tensor] | None = None  # sigma-delta: t -> the Delta
    # encoder's messages per input neuron and item in steps [0, t)

    def predictions(self, t: int) -> torch.Tensor:
        return self.readout[t].argmax(dim=1)
