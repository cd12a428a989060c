"""Reports: the deploy report (one self-contained HTML file, Markdown, a terminal summary) and
the energy report, rendered from the plain dicts that ``report.json`` holds.

Dicts keyed by the number of timesteps T may have int keys (in memory) or str keys (read back
from JSON); every renderer accepts both. Plots are matplotlib PNGs embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field

from matplotlib.figure import Figure

BAR_PARTS = (("synaptic_j", "synaptic", ""), ("neuron_j", "neuron updates", "//"),
             ("routing_j", "routing", ".."))
_PREFIXES = ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f"))
_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:1em 0}.note{color:#555;font-size:90%}"""


def by_t(d: dict) -> list[tuple[int, object]]:
    """``(T, value)`` pairs of a T-keyed dict, in increasing T."""
    return sorted((int(k), v) for k, v in d.items())


def joules(j: float | None) -> str:
    """An energy with an SI prefix, 3 significant digits."""
    if j is None:
        return "—"
    if j == 0:
        return "0 J"
    scale, prefix = next(((s, p) for s, p in _PREFIXES if abs(j) >= s), _PREFIXES[-1])
    return f"{j / scale:.3g} {prefix}J"


def count(n: float) -> str:
    """A large count with a k / M / G suffix, 4 significant digits."""
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:.4g}"


@dataclass
class Table:
    """A titled table of strings, rendered as Markdown, HTML or aligned text."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else []))

    def html(self) -> str:
        def row(cells: list[str], tag: str) -> str:
            return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (f"<h3>{html.escape(self.title)}</h3><table>{row(self.header, 'th')}"
                + "".join(row(r, "td") for r in self.rows) + f"</table>{note}")

    def text(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows])
                  for i in range(len(self.header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines = [self.title, fmt(self.header)] + [fmt(r) for r in self.rows]
        return "\n".join(lines + ([self.note] if self.note else []))


@dataclass
class Page:
    """Sections of tables, figures and paragraphs in order."""

    title: str
    parts: list = field(default_factory=list)  # Table | ("figure", png) | ("p", text) | ("h2", t)

    def html(self) -> str:
        body = []
        for part in self.parts:
            if isinstance(part, Table):
                body.append(part.html())
            elif part[0] == "figure":
                data = base64.b64encode(part[2]).decode()
                body.append(f'<img alt="{html.escape(part[1])}" '
                            f'src="data:image/png;base64,{data}">')
            elif part[0] == "list":
                body.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in part[1])
                            + "</ul>")
            else:
                body.append(f"<{part[0]}>{html.escape(part[1])}</{part[0]}>")
        return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
                f"{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(body) + "</body></html>\n")

    def markdown(self) -> str:
        out = [f"# {self.title}"]
        for part in self.parts:
            if isinstance(part, Table):
                out.append(part.markdown())
            elif part[0] == "list":
                out.append("\n".join(f"- {x}" for x in part[1]))
            elif part[0] == "h2":
                out.append(f"## {part[1]}")
            elif part[0] == "p":
                out.append(part[1])
        return "\n\n".join(out) + "\n"


def _png(draw: Callable[[Figure], None], size: tuple[float, float] = (9, 3.6)) -> bytes:
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- energy ---------------------------------------------------------------------------------

def _snn_profiles(energy: dict) -> dict[str, dict]:
    return {k: energy["per_profile"][k] for k in energy["snn_profiles"]}


def _ann_profiles(energy: dict) -> dict[str, dict]:
    return {k: energy["per_profile"][k] for k in energy["ann_profiles"]}


def _part(entry: dict, scope: str, key: str) -> str:
    if entry[key] is None:
        return "in all-in figure" if scope == "all-in" else "no figure"
    return joules(entry[key])


def energy_tables(energy: dict) -> list[Table]:
    """Counts, energy per profile and T, ratios, per layer, and the figures used."""
    ann = _ann_profiles(energy)
    tables = [Table(
        "ANN: multiply-accumulates and energy per inference",
        ["layer", "kind", "MACs", *ann],
        [[x["name"], x["kind"], count(x["macs"]),
          *(joules(p["layers"][x["name"]]) for p in ann.values())] for x in energy["ann_layers"]]
        + [["total", "", count(energy["ann_macs"]), *(joules(p["total_j"]) for p in ann.values())]],
        energy["convention"])]
    if "snn_synops" not in energy:
        return tables + [_figures_table(energy)]
    items, ups = energy["items"], energy["neuron_updates"]
    tables.append(Table(
        f"SNN: operations per inference (mean of {items} items) and per dataset",
        ["T", "SOPs", "of which graded", "of which analog input MACs",
         "neuron updates active / inactive", "spike messages", f"SOPs, all {items} items"],
        [[str(k), count(energy["snn_synops"][k]), count(energy["snn_graded_synops"][k]),
          count(energy["snn_input_macs"][k]),
          f"{count(ups[k]['active'])} / {count(ups[k]['inactive'])}",
          count(energy["spike_messages"][k]), count(energy["snn_synops_dataset"][k])]
         for k in _keys(energy["snn_synops"])]))
    rows, notes = [], []
    for name, prof in _snn_profiles(energy).items():
        if prof["status"] != "ok":
            rows.append([name, "—", prof["status"], "", "", "", *("" for _ in ann)])
            notes.append(f"{name}: {prof['note']}")
            continue
        for k in _keys(prof["by_t"]):
            e, scope = prof["by_t"][k], prof["scope"]
            ratios = [energy["ratios"].get(f"{a}/{name}", {}).get(k) for a in ann]
            rows.append([name, str(k), _part(e, scope, "synaptic_j"), _part(e, scope, "neuron_j"),
                         _part(e, scope, "routing_j"), joules(e["total_j"]),
                         *("—" if r is None else f"{r:.3g}" for r in ratios)])
    tables.append(Table("SNN: energy per inference", ["profile", "T", "synaptic",
                        "neuron updates", "routing", "total", *(f"ANN ÷ SNN ({a})" for a in ann)],
                        rows, " ".join(["Ratio as in S-ResNet sec. 4.4: ANN energy on the ANN "
                                        "profile divided by the SNN's total on the neuromorphic "
                                        "profile.", *notes])))
    tables.append(_layer_table(energy))
    return tables + [_figures_table(energy)]


def _keys(d: dict) -> list:
    """The keys of a T-keyed dict in the order of :func:`by_t`."""
    return sorted(d, key=int)


def _layer_table(energy: dict) -> Table:
    key = _keys(energy["snn_synops"])[-1]
    ok = {n: p for n, p in _snn_profiles(energy).items() if p["status"] == "ok"}
    sops = energy["population_synops"][key]
    return Table(f"SNN: per population at T = {key} (SOPs received, energy)",
                 ["population", "SOPs", *ok],
                 [[pop, count(sops[pop]),
                   *(joules(_layer_total(p, key, pop)) for p in ok.values())]
                  for pop in energy["populations"]])


def _layer_total(prof: dict, key, pop: str) -> float:
    """Joules of one population at T = key, over the parts the profile has figures for."""
    return sum(v for v in prof["by_t"][key]["layers"][pop].values() if v is not None)


def _figures_table(energy: dict) -> Table:
    rows = [[name, term, fig] for name in energy["ann_profiles"] + energy["snn_profiles"]
            for term, fig in energy["per_profile"][name]["figures"]]
    return Table("Energy figures used", ["profile", "term", "figure (kind, scope) [source]"],
                 rows)


def _grouped(ax, labels: list[str], series: dict[str, list[float]], hatches=None) -> None:
    """Grouped bars on a log axis, one colour (and hatch) per series."""
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, color=f"C{i}", label=name,
               hatch=hatches[i] if hatches else None, edgecolor="white")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    _legend(ax)


def _legend(ax) -> None:
    """A small legend right of the axes, clear of the bars."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def energy_vs_t_png(energy: dict) -> bytes:
    """Energy per inference against T: SNN totals per profile with the ANN as lines, and the
    parts (synaptic, neuron updates, routing) of every per-term profile."""
    snn = {n: p for n, p in _snn_profiles(energy).items() if p["status"] == "ok"}
    steps = _keys(energy["snn_synops"])
    labels = [str(t) for t in steps]
    split = {n: p for n, p in snn.items() if p["scope"] == "per-term" and
             sum(p["by_t"][steps[-1]][key] is not None for key, _, _ in BAR_PARTS) > 1}

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 1 + len(split), squeeze=False,
                            width_ratios=[2] + [1] * len(split))[0]
        _grouped(axes[0], labels, {n: [p["by_t"][k]["total_j"] for k in steps]
                                   for n, p in snn.items()})
        for j, (name, prof) in enumerate(_ann_profiles(energy).items()):
            axes[0].axhline(prof["total_j"], color="k", ls=("--", ":", "-.")[j % 3],
                            label=f"ANN on {name}")
        _legend(axes[0])
        axes[0].set_ylabel("energy per inference (J)")
        for ax in axes:
            ax.set_xlabel("timesteps T")
        axes[0].set_title("SNN total per profile; ANN as lines")
        for ax, (name, prof) in zip(axes[1:], split.items(), strict=True):
            parts = {label: [prof["by_t"][k][key] or 0.0 for k in steps]
                     for key, label, _ in BAR_PARTS if prof["by_t"][steps[-1]][key] is not None}
            _grouped(ax, labels, parts, [h for _, label, h in BAR_PARTS if label in parts])
            ax.set_title(f"{name} by part")

    return _png(draw, (11, 4))


def energy_per_layer_png(energy: dict) -> bytes:
    """ANN energy per layer and SNN energy per population at the largest T."""
    snn = {n: p for n, p in _snn_profiles(energy).items() if p["status"] == "ok"}
    key = _keys(energy["snn_synops"])[-1] if "snn_synops" in energy else None

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 2 if snn and key is not None else 1, squeeze=False)[0]
        names = [x["name"] for x in energy["ann_layers"]]
        _grouped(axes[0], names, {n: [p["layers"][x] for x in names]
                                  for n, p in _ann_profiles(energy).items()})
        axes[0].set_title("ANN per layer")
        if len(axes) > 1:
            pops = energy["populations"]
            _grouped(axes[1], pops, {n: [_layer_total(p, key, q) for q in pops]
                                     for n, p in snn.items()})
            axes[1].set_title(f"SNN per population at T = {key}")
        for ax in axes:
            ax.set_ylabel("J per inference")
            ax.tick_params(axis="x", rotation=45, labelsize=7)

    return _png(draw, (11, 4))


def energy_page(energy: dict, title: str) -> Page:
    """The energy report on its own (``lavaconv energy --html``)."""
    page = Page(title)
    if "snn_synops" in energy:
        page.parts.append(("figure", "energy per inference against T", energy_vs_t_png(energy)))
    page.parts.append(("figure", "energy per layer", energy_per_layer_png(energy)))
    page.parts += energy_tables(energy)
    page.parts += [("h2", "Assumptions"), ("list", energy["assumptions"])]
    if energy.get("snm_eq15"):
        page.parts.insert(-2, ("p", _snm_line(energy["snm_eq15"])))
    return page


def _snm_line(snm: dict) -> str:
    ratios = ", ".join(f"{100 * r:.1f} % at T = {t}" for t, r in by_t(snm["snn_over_ann"]))
    return (f"SNM eq. 15 on {snm['profile']} (input layer as MACs, every other SOP as an "
            f"addition): SNN energy / ANN energy = {ratios}.")


def energy_text(energy: dict) -> str:
    """The energy report for the terminal."""
    lines = [t.text() for t in energy_tables(energy)]
    if energy.get("snm_eq15"):
        lines.append(_snm_line(energy["snm_eq15"]))
    return "\n\n".join(lines + ["Assumptions:\n" + "\n".join(f"- {a}"
                                                            for a in energy["assumptions"])])


# -- deploy ---------------------------------------------------------------------------------

def _accuracy_png(report: dict) -> bytes:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        for key, label in (("snn_accuracy_float", "float SNN"), ("snn_accuracy", "integer SNN")):
            points = by_t(report[key])
            ax.plot([t for t, _ in points], [100 * a for _, a in points], "o-", label=label)
        ax.axhline(100 * report["ann_accuracy"], color="k", ls="--", label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("timesteps T")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy against T")
        ax.legend()

    return _png(draw, (7, 3.6))


def _spike_rate_png(report: dict) -> bytes:
    steps = by_t(report["spike_rate"])[-3:]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        layers = list(steps[-1][1])
        width = 0.8 / len(steps)
        for i, (t, rates) in enumerate(steps):
            xs = [j + (i - (len(steps) - 1) / 2) * width for j in range(len(layers))]
            ax.bar(xs, [rates[x] for x in layers], width, color=f"C{i}", label=f"T = {t}")
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("spikes per neuron per step (%)")
        ax.set_title("Spike rate per layer (RMP-SNN eq. 8)")
        ax.legend()

    return _png(draw)


def _resources_png(report: dict) -> bytes:
    res = report["resources"]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        names = [x["name"] for x in res["layers"]]
        ax.bar(names, [x["cores"] for x in res["layers"]], color="C0")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.set_ylabel("cores")
        ax.set_title(f"Cores per layer on {report['profile']}: {res['total_cores']} cores, "
                     f"{res['chips']} chip(s), fits: {res['fits']}")

    return _png(draw)


def _lava_line(report: dict) -> str:
    lava = report["lava"]
    if "status" in lava:
        return f"Lava ({lava['target']}): {lava['status']}"
    return (f"Lava ({lava['target']}, fixed_pt): {lava['samples']} items x {lava['timesteps']} "
            f"steps, bit-exact with the engine: {lava['bit_exact']}; "
            f"{1e3 * lava['seconds_per_step']:.2f} ms per step (engine batch-1: "
            f"{1e3 * lava['engine_batch1_seconds_per_step']:.3f} ms; engine batched: "
            f"{1e3 * report['engine']['seconds_per_step']:.4f} ms per item-step)")


def _seconds_text(report: dict) -> str:
    """Where a deploy's wall time went (``report['seconds']``: the parts of 1 s or more, the
    longest first), or nothing."""
    seconds = report.get("seconds")
    if not seconds:
        return ""
    parts = sorted(((s, part) for part, s in seconds.items() if s >= 1), reverse=True)
    shown = ", ".join(f"{part.replace('_', ' ')} {s:.0f}" for s, part in parts)
    return f"; {sum(seconds.values()):.0f} s" + (f" ({shown})" if shown else "")


def _hardware_line(report: dict) -> str:
    """Which processes ran (short class names) and what Loihi 2 still lacks."""
    lava, hw = report.get("lava", {}), report.get("hardware")
    if not hw:
        return ""
    classes = ", ".join(f"{name.rsplit('.', 1)[-1]} x{n}"
                        for name, n in lava.get("process_classes", {}).items())
    ready = "ready" if hw["ready"] else "missing " + "; ".join(hw["missing"])
    return f"Graph: {report.get('graph', 'ours')} ({classes}). Loihi 2: {ready}"


def _deploy_tables(report: dict) -> list[Table]:
    acc = Table("Accuracy", ["T", "float SNN %", "integer SNN %"],
                [[str(t), f"{100 * f:.2f}", f"{100 * a:.2f}"] for (t, a), (_, f) in
                 zip(by_t(report["snn_accuracy"]), by_t(report["snn_accuracy_float"]),
                     strict=True)])
    quant = Table("Quantization", ["layer", "vth", "a_exp", "weight err", "bias err",
                                   "saturated"],
                  [[q["name"], str(q["vth_int"]), str(q["a_exp"]),
                    f"{q['weight_rel_error']:.4f}", f"{q['bias_rel_error']:.4f}",
                    f"{q['saturated']:.2e}"] for q in report["quantization"]])
    res = report["resources"]
    cores = Table(f"Resources on {report['profile']}", ["layer", "neurons", "synapses", "cores"],
                  [[x["name"], str(x["neurons"]), str(x["synapses"]), str(x["cores"])]
                   for x in res["layers"]],
                  f"{res['total_cores']} cores on {res['chips']} chip(s); fits: {res['fits']}. "
                  f"Assumptions: {res['assumptions']}")
    return [acc, quant, cores]


def _rate_table(report: dict) -> Table:
    """The deployed (sigma-delta) network next to the rate-coded one on the same items."""
    rate = report["rate_coded"]
    profiles = [n for n, p in _snn_profiles(report["energy"]).items() if p["status"] == "ok"]
    rows = []
    for label, acc, energy in (("sigma-delta (deployed)", report["snn_accuracy"],
                                report["energy"]),
                               (f"rate-coded, {rate['graph']} graph", rate["snn_accuracy"],
                                rate["energy"])):
        per = _snn_profiles(energy)
        sops, messages = dict(by_t(energy["snn_synops"])), dict(by_t(energy["spike_messages"]))
        for t, a in by_t(acc):
            rows.append([label, str(t), f"{100 * a:.2f}", count(sops[t]), count(messages[t]),
                         *(joules(dict(by_t(per[n]["by_t"]))[t]["total_j"]) for n in profiles)])
    return Table("Per inference, integer, the same items", ["network", "T", "accuracy %",
                 "SOPs", "messages", *(f"energy ({n})" for n in profiles)], rows,
                 f"ANN: {100 * report['ann_accuracy']:.2f} %, {count(report['energy']['ann_macs'])}"
                 " MACs. Rate-coded: " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(rate["options"].items())))


def _deploy_page(report: dict, figures: bool) -> Page:
    page = Page(f"lavaconv deploy report: {report['model']}")
    opts = report["options"]
    page.parts.append(("list", [
        f"data: {report['data']}, {report['items']} evaluation items",
        "conversion: " + ", ".join(f"{k} {v}" for k, v in sorted(opts.items())),
        f"profile {report['profile']}",
        f"ANN accuracy: {100 * report['ann_accuracy']:.2f} %", _lava_line(report),
        *[line for line in [_hardware_line(report)] if line]]))
    acc, quant, cores = _deploy_tables(report)
    energy = report["energy"]

    def fig(alt: str, make: Callable[[dict], bytes], arg: dict) -> list:
        return [("figure", alt, make(arg))] if figures else []

    page.parts += [("h2", "Accuracy and activity"), *fig("accuracy against T", _accuracy_png,
                   report), acc, *fig("spike rate per layer", _spike_rate_png, report)]
    page.parts += [("h2", "Energy"), *fig("energy per inference against T", energy_vs_t_png,
                   energy), *fig("energy per layer", energy_per_layer_png, energy)]
    page.parts += energy_tables(energy)
    if "rate_coded" in report:
        page.parts += [("h2", "Sigma-delta against rate coding"), _rate_table(report)]
    if energy.get("snm_eq15"):
        page.parts.append(("p", _snm_line(energy["snm_eq15"])))
    page.parts += [("h2", "Energy assumptions"), ("list", energy["assumptions"])]
    page.parts += [("h2", "Resources and quantization"),
                   *fig("resource use", _resources_png, report), cores, quant]
    return page


def deploy_html(report: dict) -> str:
    """The deploy report as one self-contained HTML file (plots embedded)."""
    return _deploy_page(report, figures=True).html()


def deploy_markdown(report: dict) -> str:
    """The deploy report's tables as Markdown."""
    return _deploy_page(report, figures=False).markdown()


def deploy_summary(report: dict, out: str) -> str:
    """A few lines for the terminal."""
    t, acc = by_t(report["snn_accuracy"])[-1]
    energy = report["energy"]
    ann_name, ann = next(iter(_ann_profiles(energy).items()))
    parts = []
    for name, prof in _snn_profiles(energy).items():
        if prof["status"] != "ok":
            parts.append(f"{name}: {prof['status']}")
            continue
        e = dict(by_t(prof["by_t"]))[t]
        neuron = f", neuron updates {joules(e['neuron_j'])}" if e["neuron_j"] else ""
        parts.append(f"{name} {joules(e['total_j'])}{neuron}")
    res = report["resources"]
    rate = report.get("rate_coded")
    compared = [] if rate is None else [
        f"rate-coded ({rate['graph']} graph) on the same items: "
        f"{100 * dict(by_t(rate['snn_accuracy']))[t]:.2f} % at T = {t}, "
        f"{count(dict(by_t(rate['energy']['snn_synops']))[t])} SOPs per inference against "
        f"sigma-delta's {count(dict(by_t(energy['snn_synops']))[t])}"]
    return "\n".join([
        f"ANN {100 * report['ann_accuracy']:.2f} %; integer SNN {100 * acc:.2f} % at T = {t} "
        f"({report['items']} items of {report['data']})", *compared,
        _lava_line(report),
        *[line for line in [_hardware_line(report)] if line],
        f"energy per inference at T = {t}: ANN {joules(ann['total_j'])} on {ann_name}; SNN "
        + "; ".join(parts),
        f"{res['total_cores']} cores on {res['chips']} chip(s) of {report['profile']}; fits: "
        f"{res['fits']}",
        f"report: {out}/report.html (tables also in report.md, numbers in report.json)"
        + _seconds_text(report)])
