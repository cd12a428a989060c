"""The deploy report: one self-contained HTML file whose plots a browser shows, the same
tables from report.json, and a short terminal summary."""

import base64
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lavaconv.app import cli, commands
from lavaconv.app.deploy import build_report
from lavaconv.app.outputs import write_json
from lavaconv.app.report import deploy_html, deploy_markdown, deploy_summary, joules
from lavaconv.app.session import prepare

BENCH = Path(__file__).resolve().parent.parent / "bench" / "report_screenshot.py"
IMAGES = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">')


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """A deploy report of a small model (everything but the Lava run, which is not rendered
    differently)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((24, 1, 8, 8)).astype(np.float32),
             y=rng.integers(0, 3, 24))
    torch.export.save(torch.export.export(Small().eval(), (torch.zeros(1, 1, 8, 8),)),
                      root / "small.pt2")
    args = cli.parser().parse_args(["deploy", str(root / "small.pt2"), "--data",
                                    str(root / "data.npz"), "--timesteps", "16", "--samples",
                                    "8", "--profile", "loihi1", "--quiet"])
    out, _ = build_report(prepare(commands.run_config(args)), commands.deploy_config(args))
    out["lava"] = {"target": "sim", "status": "not run in this test"}
    return out


def test_html_is_self_contained_with_five_plots(report):
    page = deploy_html(report)
    assert not re.search(r'(src|href)="(?!data:)', page)
    images = IMAGES.findall(page)
    assert [alt for alt, _ in images] == ["accuracy against T", "spike rate per layer",
                                          "energy per inference against T", "energy per layer",
                                          "resource use"]
    for _, data in images:
        png = Image.open(io.BytesIO(base64.b64decode(data)))
        assert png.format == "PNG" and png.size[0] >= 600


def test_report_shows_energy_by_part_and_the_missing_figures(report):
    page, energy = deploy_html(report), report["energy"]
    t = max(energy["snn_synops"])
    loihi1 = energy["per_profile"]["loihi1"]["by_t"][t]
    for j in (loihi1["synaptic_j"], loihi1["neuron_j"], loihi1["total_j"],
              energy["per_profile"]["stratix10tx-fpga"]["total_j"]):
        assert f">{joules(j)}<" in page
    assert "no public figure" in page and "in all-in figure" in page
    assert set(energy["timesteps"]) == {8, 16}  # deploy's checkpoints below --timesteps 16


def test_tables_render_the_same_from_report_json(report, tmp_path):
    write_json(tmp_path / "report.json", report)
    assert deploy_markdown(json.loads((tmp_path / "report.json").read_text())) == \
        deploy_markdown(report)


def test_terminal_summary_is_short(report):
    lines = deploy_summary(report, "out").splitlines()
    assert len(lines) <= 6
    assert f"{100 * report['snn_accuracy'][16]:.2f} % at T = 16" in lines[0]
    neuron = report["energy"]["per_profile"]["loihi1"]["by_t"][16]["neuron_j"]
    assert f"neuron updates {joules(neuron)}" in lines[2]


def _bench():
    spec = importlib.util.spec_from_file_location("report_screenshot", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_browser_screenshot_shows_the_plots(report, tmp_path):
    bench = _bench()
    if bench.browser() is None:
        pytest.skip("no headless browser (apt-get install chromium)")
    page = deploy_html(report)
    (tmp_path / "report.html").write_text(page)
    (tmp_path / "bare.html").write_text(IMAGES.sub("", page))
    assert bench.plots_shown(bench.screenshot(tmp_path / "report.html", tmp_path / "r.png"))
    assert not any(bench.plot_pixels(bench.screenshot(tmp_path / "bare.html",
                                                      tmp_path / "b.png")).values())
