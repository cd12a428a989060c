"""Hardware profiles: the bundled files load; every kind of mistake is one line naming the field."""

import copy
from pathlib import Path

import pytest
import yaml

from lavaconv.cost.profiles import ENERGY_TERMS, PROFILE_DIR, list_profiles, load_profile
from lavaconv.errors import LavaconvError
from lavaconv.ir.fixedpoint import Formats

BUNDLED = ["horowitz-45nm", "loihi1", "loihi2", "rolls", "spinnaker1", "stratix10tx-fpga",
           "truenorth"]


@pytest.fixture
def loihi1_doc() -> dict:
    return yaml.safe_load((PROFILE_DIR / "loihi1.yaml").read_text())


def write(tmp_path: Path, doc: dict, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(LavaconvError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_profile_loads(name):
    profile = load_profile(name)
    assert profile.name == name and profile.kind in ("neuromorphic", "ann")
    for term, q in profile.quantities["energy"].items():
        assert term in ENERGY_TERMS and q.scope in ("per-term", "all-in")
        assert q.value is not None or q.note
    assert name in profile.describe()


def test_list_profiles():
    assert list_profiles() == BUNDLED


def test_typed_accessors_feed_the_quantizer():
    loihi2, loihi1 = load_profile("loihi2"), load_profile("loihi1")
    assert loihi2.formats == Formats()  # the quantizer's defaults are Loihi's
    assert (loihi2.formats.graded_payload_bits, loihi1.formats.graded_payload_bits) == (24, 0)
    assert loihi1.structure.neurons_per_core == 1024
    assert loihi1.structure.synaptic_memory_bytes_per_core == 128 * 1024
    assert isinstance(loihi2.structure.cores_per_chip, int)


def test_energy_in_joules_and_unknown_figures():
    assert load_profile("loihi1").energy("synaptic_op").joules == pytest.approx(23.6e-12)
    assert load_profile("rolls").energy("synaptic_op").joules == pytest.approx(77e-15)
    assert load_profile("spinnaker1").energy("synaptic_op").joules == pytest.approx(43e-9)
    assert load_profile("loihi2").energy("synaptic_op") is None
    assert load_profile("horowitz-45nm").energy("synaptic_op") is None


def test_energy_sum_and_all_in_misuse():
    loihi1 = load_profile("loihi1")
    total = loihi1.energy_of({"synaptic_op": 1000, "neuron_update_active": 10, "hop_ew": 0})
    assert total == pytest.approx(1000 * 23.6e-12 + 10 * 81e-12)
    truenorth = load_profile("truenorth")
    assert truenorth.energy_of({"synaptic_op": 10}) == pytest.approx(260e-12)
    with pytest.raises(LavaconvError, match="all-in"):
        truenorth.energy_of({"synaptic_op": 10, "neuron_update_active": 1})
    with pytest.raises(LavaconvError, match="energy.synaptic_op.*Intel publishes no"):
        load_profile("loihi2").energy_of({"synaptic_op": 1})


def test_energy_only_profile_has_no_formats():
    with pytest.raises(LavaconvError, match="truenorth: has no formats.*loihi1, loihi2"):
        _ = load_profile("truenorth").formats


def mutate(doc: dict, dotted: str, value=None, delete: bool = False) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("dotted, value, delete, expected", [
    ("formats.state_bits", None, True, "formats.state_bits: missing"),
    ("formats.weight_bits.value", "x", False,
     "formats.weight_bits: expected int in [1, 9], got 'x'"),
    ("formats.weight_bits.value", 12, False, "formats.weight_bits: expected int in [1, 9], got 12"),
    ("formats.weight_bits.value", True, False, "formats.weight_bits: expected int"),
    ("structure.cores_per_chip.value", None, False, "structure.cores_per_chip: expected int"),
    ("formats.weight_bits", 8, False, "formats.weight_bits: expected a mapping"),
    ("formats.weight_bits.unit", "bits", False, "formats.weight_bits.unit: expected 'bit'"),
    ("formats.weight_bits.kind", "guess", False, "formats.weight_bits.kind: expected one of"),
    ("formats.weight_bits.source", "wikipedia", False,
     "formats.weight_bits.source: unknown source 'wikipedia'"),
    ("formats.weight_bits.kind", None, True, "formats.weight_bits.kind: missing"),
    ("formats.weight_bits.scope", "per-term", False, "formats.weight_bits: unknown field 'scope'"),
    ("formats.weight_exp_min.value", 9, False, "formats.weight_exp_min: 9 is above"),
    ("structure.cores", {"value": 1}, False, "structure.cores: unknown field"),
    ("colour", "blue", False, "colour: unknown field"),
    ("kind", "analog", False, "kind: expected one of neuromorphic, ann, got 'analog'"),
    ("description", None, True, "description: missing"),
    ("energy.synaptic_op.unit", "pj", False, "energy.synaptic_op.unit: expected 'fJ' or 'pJ'"),
    ("energy.synaptic_op.value", -1, False, "energy.synaptic_op: expected a number > 0"),
    ("energy.synaptic_op.scope", None, True, "energy.synaptic_op.scope: missing"),
    ("energy.synaptic_op.scope", "total", False, "energy.synaptic_op.scope: expected one of"),
    ("energy.synaptic_op.value", None, False,
     "energy.synaptic_op.note: missing (required when value is null)"),
    ("energy.synops", {"value": 1}, False, "energy.synops: unknown energy term"),
])
def test_each_mistake_is_one_line_naming_the_field(tmp_path, loihi1_doc, dotted, value, delete,
                                                   expected):
    if dotted == "energy.synaptic_op.value" and value is None:  # a null figure needs a note
        loihi1_doc["energy"]["synaptic_op"].pop("note")
    message = error_of(write(tmp_path, mutate(loihi1_doc, dotted, value, delete)))
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: {expected}")


def test_ann_profile_cannot_carry_formats(tmp_path, loihi1_doc):
    doc = dict(loihi1_doc, kind="ann")
    assert "formats: only a neuromorphic profile" in error_of(write(tmp_path, doc))


def test_hostile_yaml_is_refused_by_safe_load(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "not a valid profile YAML (line 1)" in error_of(path)
    assert not marker.exists()
    path.write_text("name: [unclosed\n")
    assert "not a valid profile YAML" in error_of(path)


def test_user_profile_from_a_path(tmp_path, loihi1_doc):
    doc = mutate(loihi1_doc, "energy.synaptic_op.value", 5.0)
    doc["name"] = "my-loihi"
    profile = load_profile(str(write(tmp_path, doc, "my-loihi.yaml")))
    assert profile.name == "my-loihi" and profile.energy("synaptic_op").value == 5.0
    assert profile.formats == load_profile("loihi1").formats


def test_user_profile_extends_a_bundled_one(tmp_path):
    doc = {"extends": "loihi2", "sources": {"mine": "my measurement"},
           "energy": {"synaptic_op": {"value": 10, "unit": "pJ", "source": "mine",
                                      "kind": "measured", "scope": "per-term"}}}
    profile = load_profile(write(tmp_path, doc, "lab.yaml"))
    assert profile.name == "lab" and profile.energy("synaptic_op").joules == pytest.approx(1e-11)
    assert profile.formats == load_profile("loihi2").formats
    assert profile.energy("hop_ew") is None
    doc["extends"] = "loihi9"
    assert "extends: expected a bundled profile name" in error_of(write(tmp_path, doc))


def test_unknown_names_and_paths():
    with pytest.raises(LavaconvError, match="unknown profile 'loihi3'.*loihi1, loihi2"):
        load_profile("loihi3")
    with pytest.raises(LavaconvError, match="no such profile file"):
        load_profile("/nonexistent/x.yaml")
