"""Loihi fixed point: the constants every integer stage shares, and a target's numeric formats.

Lava 0.10's bit-accurate models (``lava/proc/lif/models.py``, ``dense/models.py``,
``conv/models.py``) fix these; the quantizer, the integer engine, the Lava models and the
exports read them from here.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field

THRESHOLD_SHIFT = 6  # vth = vth_mant << 6; a synaptic sum enters the state as a << (6 + a_exp)
STATE_BITS = 24  # signed neuron state; a Conv's output wraps to this width
DENSE_WEIGHT_RANGE = (-256, 254)  # 8-bit mixed-sign Dense weights as netx writes them
GRADED_FLOAT_BITS = 24  # message width declared for float payloads (CPU only; Loihi 2's widest)


def wrap(a, bits: int = STATE_BITS):
    """Two's-complement wrap of an integer-valued array or tensor to ``bits`` (Lava's Conv
    ``signed_clamp``)."""
    half = 2 ** (bits - 1)
    return (a + half) % (2 * half) - half


def quantity(unit: str, lo: int, hi: int, doc: str, default=MISSING, required: bool = True):
    """A dataclass field holding an integer quantity of ``unit`` in ``[lo, hi]``; ``required``:
    a profile file must give it."""
    meta = {"unit": unit, "range": (lo, hi), "doc": doc, "required": required}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Formats:
    """Fixed-point formats of a neuromorphic target (a profile's ``formats``; the defaults are
    Loihi 2's, as Lava 0.10's bit-accurate models implement them)."""

    weight_bits: int = quantity("bit", 1, 9, "weight mantissa, signed", 8)
    weight_exp_min: int = quantity("log2", -16, 16, "smallest shared weight exponent", -8)
    weight_exp_max: int = quantity("log2", -16, 16, "largest shared weight exponent", 7)
    threshold_mant_bits: int = quantity("bit", 1, 24, "threshold mantissa, unsigned", 17)
    bias_mant_bits: int = quantity("bit", 1, 24, "bias mantissa, signed", 13)
    bias_exp_max: int = quantity("log2", 0, 16, "largest bias exponent (bias = mant << exp)", 7)
    state_bits: int = quantity("bit", 8, 32, "membrane state, signed", STATE_BITS)
    graded_payload_bits: int = quantity("bit", 0, 32, "graded spike payload (0: binary spikes)",
                                        24)
    input_payload_bits: int = quantity("bit", 1, 32, "analog input payload", 8)

    @property
    def threshold_shift(self) -> int:
        """Fixed by the neuron models (not a profile field): vth = mantissa << 6."""
        return THRESHOLD_SHIFT
