"""Energy per inference: the ANN's MACs on ANN profiles, the SNN's measured activity on
neuromorphic profiles, per layer and in total, against the number of timesteps T.

Counts come from :mod:`~lavaconv.cost.counting`, figures from the profiles. An SNN's cost
has three parts, each priced on its own: synaptic (one SOP per spike and non-zero synapse it
reaches), neuron (every neuron updates every step) and routing (one message per spike and
synapse). An all-in figure (TrueNorth, SpiNNaker) is the whole cost of a synaptic event and
stands alone; a part a profile has no figure for is left out of its total and shown as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lavaconv.cost.counting import LayerCount, snn_synops
from lavaconv.cost.profiles import Profile, load_profile
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Input, Network, Readout, SigmaDelta
from lavaconv.sim.evaluation import Activity

CONVENTION = ("1 MAC = 1 op (as torchvision and syops-counter count); an FPGA datasheet counts "
              "2 FLOPs per MAC")
FLOPS_PER_MAC = 2
DEFAULT_ANN_PROFILES = ("stratix10tx-fpga", "horowitz-45nm")
DEFAULT_SNN_PROFILES = ("rolls", "loihi1", "loihi2", "truenorth", "spinnaker1")
PARTS = {  # part of an SNN's cost -> the energy terms it is made of
    "synaptic": ("synaptic_op",),
    "neuron": ("neuron_update_active", "neuron_update_inactive"),
    "routing": ("spike_in_tile",),
}


def neuron_updates(net: Network, timesteps: int) -> dict[str, tuple[float, float]]:
    """(active, inactive) updates per item of every IF and readout population in T steps.

    Every neuron updates every step; a step counts as active from the population's
    ``t_start`` on (its bias current and first input arrive then), inactive before.
    """
    out = {}
    for name, node in net.nodes.items():
        if isinstance(node, (IF, Readout, SigmaDelta)):
            n = float(np.prod(node.shape))
            active = max(0, timesteps - node.t_start)
            out[name] = (n * active, n * (timesteps - active))
    return out


def population_counts(net: Network, activity: Activity, timesteps: int
                      ) -> tuple[list[LayerCount], dict[str, dict[str, float]]]:
    """Per item at T: the SOPs of every synapse, and the energy-term counts of every
    population (its incoming synapses' SOPs and messages, its neuron updates)."""
    spikes = activity.spike_counts[timesteps]
    synops = snn_synops(net, spikes, activity.input_events[timesteps], activity.items)
    per_pop = {name: {"synaptic_op": 0.0, "input_macs": 0.0, "spike_in_tile": 0.0}
               for name, node in net.nodes.items() if isinstance(node, (IF, Readout, SigmaDelta))}
    for syn, count in zip(net.synapses, synops, strict=True):
        pop = per_pop[syn.target]
        pop["synaptic_op"] += count.ops
        if not isinstance(net.nodes[syn.source], Input):
            pop["spike_in_tile"] += float(np.abs(spikes[syn.source]).sum()) / activity.items
        elif count.graded:
            pop["input_macs"] += count.ops
    for name, (active, inactive) in neuron_updates(net, timesteps).items():
        per_pop[name].update(neuron_update_active=active, neuron_update_inactive=inactive)
    return synops, per_pop


def _price(profile: Profile, counts: dict[str, float], terms: Sequence[str]) -> float | None:
    """Joules of ``terms`` (None where a term with a non-zero count has no figure)."""
    used = {t: counts.get(t, 0.0) for t in terms if counts.get(t, 0.0)}
    if any(profile.energy(t) is None for t in used):
        return None
    return profile.energy_of(used)


def _figure(profile: Profile, term: str) -> str:
    q = profile.quantities["energy"].get(term)
    if q is None:
        return "no figure"
    if q.value is None:
        return "no public figure"
    return f"{q.value:g} {q.unit} ({q.kind}, {q.scope}) [{q.source}]"


def _ann_terms(profile: Profile, macs: float) -> dict[str, float]:
    """The energy terms one ANN's MACs cost on ``profile``."""
    if profile.energy("mac_fp32") is not None:
        return {"mac_fp32": macs}
    if profile.energy("flop") is not None:
        return {"flop": FLOPS_PER_MAC * macs}
    raise LavaconvError(f"profile {profile.name}: no figure for energy.mac_fp32 or energy.flop; "
                        "an ANN profile needs one of them")


def ann_energy(profile: Profile, layers: Sequence[LayerCount]) -> dict:
    """Energy per inference of the ANN on an ANN profile, per layer and in total."""
    per_layer = {layer.name: profile.energy_of(_ann_terms(profile, layer.ops))
                 for layer in layers}
    term = next(iter(_ann_terms(profile, 1.0)))
    return {"kind": "ann", "total_j": sum(per_layer.values()), "layers": per_layer,
            "figures": [[term, _figure(profile, term)]], "description": profile.description}


def _layer_energy(profile: Profile, counts: dict[str, float], all_in: bool) -> dict:
    """Joules of each part for one population (None: no figure, or included in an all-in one)."""
    return {f"{part}_j": _price(profile, counts, terms) if part == "synaptic" or not all_in
            else None for part, terms in PARTS.items()}


def snn_energy(profile: Profile, per_pop_by_t: dict[int, dict[str, dict[str, float]]]) -> dict:
    """Energy per inference of the SNN on a neuromorphic profile, by part, layer and T."""
    syn = profile.quantities["energy"].get("synaptic_op")
    all_in = syn is not None and syn.scope == "all-in"
    shown = PARTS["synaptic"] if all_in else [t for terms in PARTS.values() for t in terms]
    out = {"kind": "neuromorphic", "scope": "all-in" if all_in else "per-term",
           "figures": [[t, _figure(profile, t)] for t in shown],
           "description": profile.description, "by_t": {}}
    if profile.energy("synaptic_op") is None:
        out["status"] = "no public figure"
        out["note"] = (syn.note if syn is not None and syn.note else
                       f"profile {profile.name} gives no synaptic_op figure")
        return out
    out["status"] = "ok"
    for t, per_pop in per_pop_by_t.items():
        layers = {name: _layer_energy(profile, c, all_in) for name, c in per_pop.items()}
        totals: dict = {}
        for key in ("synaptic_j", "neuron_j", "routing_j"):
            values = [layer[key] for layer in layers.values()]
            totals[key] = None if None in values else sum(values)
        totals["total_j"] = sum(v for v in totals.values() if v is not None)
        out["by_t"][t] = {**totals, "layers": layers}
    return out


def _ratios(ann: dict[str, dict], snn: dict[str, dict]) -> dict[str, dict[int, float]]:
    """ANN energy / SNN energy for every pair of profiles with numbers (S-ResNet sec. 4.4)."""
    out = {}
    for a, ea in ann.items():
        for s, es in snn.items():
            if es["status"] == "ok":
                out[f"{a}/{s}"] = {t: ea["total_j"] / v["total_j"] for t, v in es["by_t"].items()
                                   if v["total_j"] > 0}
    return out


def _snm_eq15(profiles: Sequence[Profile], ann_macs: float, synops: dict[int, float],
              input_macs: dict[int, float]) -> dict | None:
    """SNN/ANN energy by SNM eq. 15 on the first profile with fp32 MAC and add figures."""
    for p in profiles:
        mac, add = p.energy("mac_fp32"), p.energy("add_fp32")
        if mac is not None and add is not None:
            # SNM eq. 15: (c * alpha + (1 - c/b) * b * beta) / (a * alpha)
            ratio = {t: (input_macs[t] * mac.joules + (b - input_macs[t]) * add.joules)
                     / (ann_macs * mac.joules) for t, b in synops.items()}
            return {"profile": p.name, "snn_over_ann": ratio}
    return None


def _assumptions(ann_profiles: Sequence[Profile], net: Network | None,
                 activity: Activity | None) -> list[str]:
    lines = [f"Counting: {CONVENTION}. ANN MACs are those of the conv and linear layers "
             "(BatchNorm folded; pooling, bias, residual adds and activations not counted)."]
    for p in ann_profiles:
        term = next(iter(_ann_terms(p, 1.0)))
        if term == "flop":
            lines.append(f"ANN on {p.name}: {FLOPS_PER_MAC} FLOPs per MAC at {_figure(p, 'flop')}"
                         ". S-ResNet (sec. 4.4) prices 1.82 / 3.67 / 4.12 G ops for ResNet-18/34/"
                         "50, their MAC counts, at one FLOP each: its ANN energy (and ratio) is "
                         "half of this one's for the same counts.")
        else:
            lines.append(f"ANN on {p.name}: one fp32 MAC per MAC at {_figure(p, 'mac_fp32')}.")
    if net is None or activity is None:
        return lines
    inp = net.nodes[net.input_name]
    lines += [
        f"SOPs measured by the engine on {activity.items} items: every spike emitted in steps "
        "0..T-1 times the non-zero synapses it reaches (exact at conv borders and strides); "
        "per item = mean over the items.",
        "Neuron updates: every IF and readout neuron updates every step, counted active from "
        "its population's first input step (t_start) on and inactive before.",
        "Routing: one spike_in_tile per spike and outgoing synapse (input from the host "
        "excluded); inter-tile hops, static and leakage power are not counted (they depend "
        "on placement and run time).",
        "An all-in figure (synaptic event of the whole chip) is used alone: neuron updates "
        "and routing are included in it. A part without a figure is left out of the total.",
        "Figures are of different kinds (vendor peak efficiency, pre-silicon simulation, chip "
        "measurement) and process nodes (FPGA 14 nm, ROLLS 180 nm): ratios compare estimates.",
    ]
    if any(net.is_graded(s.source) for s in net.synapses
           if not isinstance(net.nodes[s.source], Input)):
        lines.append("Graded spikes (a population whose spike carries a value other than 1) "
                     "are marked graded; each graded event is priced as one synaptic event.")
    if inp.encoding == "analog":
        lines.append("Analog input: the input layer's graded events are multiply-accumulates "
                     "(SNM eq. 15); on neuromorphic profiles each is priced as one synaptic "
                     "event, although ROLLS and Loihi 1 take binary spikes only (a host or "
                     "graded-spike hardware such as Loihi 2 must send them).")
    return lines


def profiles_of(names: Sequence[str | Profile], kind: str) -> list[Profile]:
    """Load profiles by name or path and check they are of ``kind`` (ann | neuromorphic)."""
    out = []
    for name in names:
        p = name if isinstance(name, Profile) else load_profile(name)
        if p.kind != kind:
            side = "ANN" if kind == "ann" else "SNN"
            raise LavaconvError(f"profile {p.name} is {p.kind}, not {kind}: it cannot price the "
                                f"{side}; choose it on the other side")
        out.append(p)
    return out


def summarize(ann_layers: Sequence[LayerCount], ann_profiles: Sequence[Profile],
              net: Network | None = None, activity: Activity | None = None,
              snn_profiles: Sequence[Profile] = ()) -> dict:
    """The ``energy`` section of a report: counts, energy per profile, ratios, assumptions."""
    ann_total = sum(layer.ops for layer in ann_layers)
    out = {
        "convention": CONVENTION,
        "ann_macs": round(ann_total),  # per item; a MAC count is a whole number
        "ann_layers": [{"name": x.name, "kind": x.kind, "macs": round(x.ops)}
                       for x in ann_layers],
        "ann_profiles": [p.name for p in ann_profiles],  # in the user's order (JSON sorts keys)
        "snn_profiles": [p.name for p in snn_profiles] if activity is not None else [],
        "per_profile": {p.name: ann_energy(p, ann_layers) for p in ann_profiles},
        "assumptions": _assumptions(ann_profiles, net, activity),
    }
    if net is None or activity is None:
        return out
    steps = sorted(activity.spike_counts)
    synops, per_pop = {}, {}
    for t in steps:
        synops[t], per_pop[t] = population_counts(net, activity, t)
    total = {t: sum(x.ops for x in synops[t]) for t in steps}
    input_macs = {t: sum(p["input_macs"] for p in per_pop[t].values()) for t in steps}
    updates = {t: neuron_updates(net, t).values() for t in steps}
    out.update(
        items=activity.items,
        timesteps=steps,
        populations=list(per_pop[steps[0]]),  # network order (JSON sorts keys)
        population_synops={t: {k: c["synaptic_op"] for k, c in per_pop[t].items()}
                           for t in steps},
        snn_synops=total,
        snn_synops_dataset={t: v * activity.items for t, v in total.items()},
        snn_graded_synops={t: sum(x.ops for x in synops[t] if x.graded) for t in steps},
        snn_input_macs=input_macs,
        snn_layers={t: [{"name": x.name, "kind": x.kind, "synops": x.ops, "graded": x.graded}
                        for x in synops[t]] for t in steps},
        neuron_updates={t: {"active": sum(a for a, _ in u), "inactive": sum(i for _, i in u)}
                        for t, u in updates.items()},
        spike_messages={t: sum(p["spike_in_tile"] for p in per_pop[t].values()) for t in steps},
    )
    snn = {p.name: snn_energy(p, per_pop) for p in snn_profiles}
    out["per_profile"].update(snn)
    out["ratios"] = _ratios({p.name: out["per_profile"][p.name] for p in ann_profiles}, snn)
    out["snm_eq15"] = _snm_eq15(ann_profiles, ann_total, total, input_macs)
    return out
