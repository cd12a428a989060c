"""Hardware profiles (``hw_profiles/*.yaml``): numeric formats, structure and energy figures.

Every number is a mapping ``{value, unit, source, kind}`` (plus an optional ``note``):
``source`` names an entry of the file's ``sources`` section, ``kind`` is one of
measured, simulated, derived, vendor-claim, architectural. Energy figures also carry
``scope``: ``per-term`` (one term of a sum: a synaptic op next to a neuron update) or
``all-in`` (the whole cost of the event; never added to anything else). An energy
``value: null`` (with a note) means no public figure; a user profile may fill it in, either
as a full copy or as ``extends: loihi2`` plus the fields it overrides.

The schema is the dataclasses below: a field's metadata gives its unit and range.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from lavaconv.errors import LavaconvError, cut, shown
from lavaconv.ir.fixedpoint import Formats, quantity

PROFILE_DIR = Path(__file__).resolve().parents[1] / "hw_profiles"  # package data
KINDS = ("measured", "simulated", "derived", "vendor-claim", "architectural")
SCOPES = ("per-term", "all-in")
PROFILE_KINDS = ("neuromorphic", "ann")
ENERGY_UNITS = {"fJ": 1e-15, "pJ": 1e-12, "nJ": 1e-9, "uJ": 1e-6, "mJ": 1e-3, "J": 1.0}
ENERGY_TERMS = {
    "synaptic_op": "one synaptic event (SOP): a spike delivered through one synapse",
    "synaptic_update": "one synaptic weight update by on-chip learning",
    "neuron_update_active": "one neuron (compartment) update in a step with input",
    "neuron_update_inactive": "one neuron (compartment) update in a step without input",
    "spike_in_tile": "one spike sent within a tile",
    "hop_ew": "one spike hop between tiles, east-west",
    "hop_ns": "one spike hop between tiles, north-south",
    "dnn_op_8bit": "one 8-bit DNN operation as counted by the vendor",
    "flop": "one floating-point operation (a MAC is 2 FLOPs)",
    "add_fp32": "one 32-bit float addition",
    "mult_fp32": "one 32-bit float multiplication",
    "mac_fp32": "one 32-bit float multiply-accumulate",
    "add_int8": "one 8-bit integer addition",
    "mult_int8": "one 8-bit integer multiplication",
    "add_int32": "one 32-bit integer addition",
    "mult_int32": "one 32-bit integer multiplication",
    "sram_read_64b": "one 64-bit read from an 8 KB SRAM",
    "dram_access": "one 64-bit DRAM access",
}


@dataclass(frozen=True)
class Structure:
    """Cores, neurons and memory of a neuromorphic chip (what the resource estimate needs)."""

    cores_per_chip: int = quantity("core", 1, 1 << 20, "neuro-cores per chip")
    neurons_per_core: int = quantity("neuron", 1, 1 << 24, "neurons (compartments) per core")
    synaptic_memory_bytes_per_core: int = quantity("byte", 1, 1 << 40, "synaptic memory per core")
    max_fan_in_axons_per_core: int = quantity("axon", 1, 1 << 24, "input axons per core")
    max_fan_out_per_core: int = quantity("edge", 1, 1 << 24, "output fan-out edges per core")
    neurons_per_chip: int | None = quantity("neuron", 1, 1 << 40, "neurons per chip", None, False)
    synapses_per_chip: int | None = quantity("synapse", 1, 1 << 48, "synapses per chip", None,
                                             False)
    embedded_cpus_per_chip: int | None = quantity("core", 0, 1 << 10, "embedded CPUs", None, False)
    chips_per_board: int | None = quantity("chip", 1, 1 << 16, "chips per board", None, False)


@dataclass(frozen=True)
class Quantity:
    """One number of a profile, as written in the file (``value`` None: no public figure)."""

    value: float | None
    unit: str
    source: str | None  # key of the profile's ``sources``
    kind: str | None
    scope: str | None = None  # energy only
    note: str | None = None

    @property
    def joules(self) -> float:
        """An energy value in joules."""
        if self.value is None:
            raise ValueError("this quantity has no value")
        return float(self.value) * ENERGY_UNITS[self.unit]


@dataclass(frozen=True)
class Profile:
    """A validated hardware profile."""

    name: str
    kind: str  # "neuromorphic" | "ann"
    description: str
    path: Path
    sources: dict[str, str]
    quantities: dict[str, dict[str, Quantity]]  # section -> field -> quantity
    notes: tuple[str, ...] = ()

    @property
    def formats(self) -> Formats:
        return Formats(**self._values("formats"))

    @property
    def structure(self) -> Structure:
        return Structure(**self._values("structure"))

    def _values(self, section: str) -> dict:
        if section not in self.quantities:
            targets = ", ".join(n for n in list_profiles() if _has_formats(n)) or "none"
            raise LavaconvError(f"profile {self.name}: has no {section} (energy figures only); "
                                f"use a target profile ({targets})")
        return {k: q.value for k, q in self.quantities[section].items()}

    def energy(self, term: str) -> Quantity | None:
        """The figure for an energy term, or None where the profile has no number for it."""
        if term not in ENERGY_TERMS:
            raise ValueError(f"unknown energy term {shown(term)}")
        q = self.quantities["energy"].get(term)
        return q if q is not None and q.value is not None else None

    def energy_of(self, counts: Mapping[str, float]) -> float:
        """Joules of ``sum(count * energy(term))``; an all-in term must stand alone."""
        used = {t: c for t, c in counts.items() if c}
        for term in used:
            q = self.energy(term)
            if q is None:
                note = self.quantities["energy"].get(term)
                why = f" ({note.note})" if note is not None and note.note else ""
                raise LavaconvError(f"profile {self.name}: no figure for energy.{term}{why}; "
                                    f"add one in a copy of {self.path.name}")
            if q.scope == "all-in" and len(used) > 1:
                others = ", ".join(sorted(set(used) - {term}))
                raise LavaconvError(f"profile {self.name}: energy.{term} is all-in (it already "
                                    f"includes every other cost) and cannot be added to {others}")
        return sum(c * self.energy(t).joules for t, c in used.items())

    def describe(self) -> str:
        """A human-readable table of every number, its kind, scope and source."""
        lines = [f"{self.name} ({self.kind}): {self.description}", f"file: {self.path}"]
        for section, items in self.quantities.items():
            lines += ["", section]
            for key, q in items.items():
                value = "unknown" if q.value is None else f"{q.value:,}" if isinstance(
                    q.value, int) else f"{q.value:g}"
                tags = "  ".join(t for t in (q.kind, q.scope, q.source and f"[{q.source}]") if t)
                lines.append(f"  {key:<31} {value:>11} {q.unit:<8} {tags}")
                if q.note:
                    lines.append(f"  {'':<31} {'':>11} {'':<8} note: {q.note}")
        lines += ["", "sources"] + [f"  [{k}] {v}" for k, v in self.sources.items()]
        if self.notes:
            lines += ["", "notes"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


class _Checker:
    """Validation of one document; every error is one line naming the file and the field."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.sources: dict[str, str] = {}

    def fail(self, where: str, message: str) -> LavaconvError:
        return LavaconvError(f"{cut(self.label)}: {cut(str(where), 80)}: {message}")

    def mapping(self, raw, where: str) -> dict:
        if not isinstance(raw, dict):
            raise self.fail(where, f"expected a mapping, got {shown(raw)}")
        return raw

    def text(self, raw, where: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(where, f"expected a non-empty string, got {shown(raw)}")
        return raw

    def quantity(self, raw, where: str, units: tuple[str, ...],
                 value_error: Callable[[object], str | None], energy: bool) -> Quantity:
        """One ``{value, unit, source, kind[, scope][, note]}`` mapping; ``value_error(v)``
        returns what is wrong with the value, or None."""
        if not isinstance(raw, dict):
            raise self.fail(where, "expected a mapping {value, unit, source, kind}, got "
                            f"{shown(raw)}")
        allowed = ("value", "unit", "source", "kind", "note") + (("scope",) if energy else ())
        for key in raw:
            if key not in allowed:
                raise self.fail(where, f"unknown field {shown(key)} (allowed: "
                                f"{', '.join(allowed)})")
        if "value" not in raw:
            raise self.fail(f"{where}.value", "missing")
        problem = value_error(raw["value"])
        if problem:
            raise self.fail(where, problem)
        known = raw["value"] is not None
        required = ("unit",) + (("source", "kind") if known else ("note",)) + (
            ("scope",) if energy else ())
        for key in required:
            if key not in raw:
                raise self.fail(f"{where}.{key}", "missing" if known else
                                "missing (required when value is null)")
        if raw["unit"] not in units:
            raise self.fail(f"{where}.unit", f"expected {' or '.join(map(repr, units))}, "
                            f"got {shown(raw['unit'])}")
        if "source" in raw and self.text(raw["source"], f"{where}.source") not in self.sources:
            raise self.fail(f"{where}.source", f"unknown source {shown(raw['source'])} (defined "
                            f"in sources: {', '.join(self.sources) or 'none'})")
        for key, choices in (("kind", KINDS), ("scope", SCOPES)):
            if key in raw and raw[key] not in choices:
                raise self.fail(f"{where}.{key}", f"expected one of {', '.join(choices)}, "
                                f"got {shown(raw[key])}")
        note = self.text(raw["note"], f"{where}.note") if "note" in raw else None
        return Quantity(raw["value"], raw["unit"], raw.get("source"), raw.get("kind"),
                        raw.get("scope"), note)

    def schema_section(self, doc: dict, section: str, schema) -> dict[str, Quantity]:
        """A formats or structure section against its dataclass."""
        if section not in doc:
            raise self.fail(section, "missing (a target profile needs formats and structure)")
        raw = self.mapping(doc[section], section)
        specs = {f.name: f for f in fields(schema)}
        for key in raw:
            if key not in specs:
                raise self.fail(f"{section}.{key}", f"unknown field (allowed: {', '.join(specs)})")
        out = {}
        for name, spec in specs.items():
            if name not in raw:
                if spec.metadata["required"]:
                    raise self.fail(f"{section}.{name}", "missing")
                continue
            lo, hi = spec.metadata["range"]

            def value_error(v, lo=lo, hi=hi) -> str | None:
                ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
                return None if ok else f"expected int in [{lo}, {hi}], got {shown(v)}"

            out[name] = self.quantity(raw[name], f"{section}.{name}", (spec.metadata["unit"],),
                                      value_error, energy=False)
        return out

    def energy_section(self, raw) -> dict[str, Quantity]:
        raw = self.mapping(raw, "energy")
        if not raw:
            raise self.fail("energy", "expected at least one energy term")
        out = {}
        for term, entry in raw.items():
            if term not in ENERGY_TERMS:
                raise self.fail(f"energy.{term}", "unknown energy term (known: "
                                f"{', '.join(ENERGY_TERMS)})")
            out[term] = self.quantity(entry, f"energy.{term}", tuple(ENERGY_UNITS),
                                      _energy_value_error, energy=True)
        return out


def _energy_value_error(v) -> str | None:
    ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)
    return None if ok else f"expected a number > 0 (or null with a note), got {shown(v)}"


TOP_LEVEL = ("name", "kind", "description", "extends", "sources", "formats", "structure",
             "energy", "notes")


def parse_profile(doc, label: str, path: Path) -> Profile:
    """Validate a loaded YAML document (``extends`` already applied)."""
    check = _Checker(label)
    doc = check.mapping(doc, "top level")
    for key in doc:
        if key not in TOP_LEVEL:
            raise check.fail(str(key), f"unknown field (allowed: {', '.join(TOP_LEVEL)})")
    for key in ("name", "kind", "description", "sources", "energy"):
        if key not in doc:
            raise check.fail(key, "missing")
    name, description = check.text(doc["name"], "name"), check.text(doc["description"],
                                                                     "description")
    if doc["kind"] not in PROFILE_KINDS:
        raise check.fail("kind", f"expected one of {', '.join(PROFILE_KINDS)}, "
                         f"got {shown(doc['kind'])}")
    sources = check.mapping(doc["sources"], "sources")
    check.sources = {str(k): check.text(v, f"sources.{k}") for k, v in sources.items()}
    quantities = {}
    if "formats" in doc or "structure" in doc:
        if doc["kind"] != "neuromorphic":
            raise check.fail("formats" if "formats" in doc else "structure",
                             "only a neuromorphic profile has formats and structure")
        quantities["formats"] = check.schema_section(doc, "formats", Formats)
        quantities["structure"] = check.schema_section(doc, "structure", Structure)
        lo, hi = (quantities["formats"][k].value for k in ("weight_exp_min", "weight_exp_max"))
        if lo > hi:
            raise check.fail("formats.weight_exp_min", f"{lo} is above weight_exp_max {hi}")
    quantities["energy"] = check.energy_section(doc["energy"])
    notes = doc.get("notes", [])
    if not isinstance(notes, list):
        raise check.fail("notes", f"expected a list of strings, got {shown(notes)}")
    notes = tuple(check.text(n, "notes") for n in notes)
    return Profile(name, doc["kind"], description, path, check.sources, quantities, notes)


def list_profiles() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _has_formats(name: str) -> bool:
    return "formats" in _read(PROFILE_DIR / f"{name}.yaml", f"{name}.yaml")


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors and aliases: a few hundred bytes of nested aliases
    expand to gigabytes (a "billion laughs" document)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) "
                                              "are not allowed", event.start_mark)
        return super().compose_node(parent, index)


def _read(path: Path, label: str) -> dict:
    """A YAML file loaded safely (no tags, anchors or aliases), errors as one line."""
    try:
        doc = yaml.load(path.read_bytes().decode("utf-8"), Loader=_PlainLoader)  # noqa: S506
    except OSError as err:
        raise LavaconvError(f"{label}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise LavaconvError(f"{label}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise LavaconvError(f"{label}: not a valid profile YAML{at}: {cut(problem)}") from None
    return doc if doc is not None else {}


def _bundled(name: str) -> Path:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise LavaconvError(f"unknown profile {shown(name)}: choose one of "
                            f"{', '.join(list_profiles())} or give a path to a .yaml file")
    return path


def _extend(doc: dict, label: str) -> dict:
    """``extends: NAME``: the bundled profile NAME with this document's fields on top."""
    base_name = doc.get("extends")
    if not isinstance(base_name, str) or base_name not in list_profiles():
        raise LavaconvError(f"{label}: extends: expected a bundled profile name "
                            f"({', '.join(list_profiles())}), got {shown(base_name)}")
    base = _read(_bundled(base_name), f"{base_name}.yaml")
    merged = {**base, **{k: v for k, v in doc.items() if k != "extends"}}
    merged["name"] = doc.get("name", Path(label).stem)
    for section in ("sources", "formats", "structure", "energy"):
        if isinstance(base.get(section), dict) and isinstance(doc.get(section), dict):
            merged[section] = {**base[section], **doc[section]}
    return merged


def load_profile(name_or_path: str | Path) -> Profile:
    """A bundled profile by name (file stem in ``hw_profiles/``), or any YAML file by path."""
    text = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text
    path = Path(text) if is_path else _bundled(text)
    label = text if is_path else path.name
    if not path.is_file():
        raise LavaconvError(f"{label}: no such profile file")
    doc = _read(path, label)
    if isinstance(doc, dict) and "extends" in doc:
        doc = _extend(doc, label)
    return parse_profile(doc, label, path.resolve())
