"""Render a report.html in headless Chromium, save a PNG, and check that the plots show.

    .venv/bin/python bench/report_screenshot.py out/deploy/report.html [--png out/report.png]

Chromium is Debian's ``chromium`` package. The check counts the screenshot's pixels in
matplotlib's first two colours (C0, C1), which only the embedded plots use: a page whose
images did not load has none. Exit status 1 when the plots are missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PLOT_COLOURS = {"C0": (31, 119, 180), "C1": (255, 127, 14)}
MIN_PIXELS = 2000  # a bar or a line of one plot covers far more at 1200 px wide
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    """The headless browser's executable, or None where none is installed."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 8000) -> Path:
    """Draw ``html`` in a ``width`` x ``height`` window (tall enough for a whole report)."""
    exe = browser()
    if exe is None:
        raise RuntimeError(f"no headless browser ({', '.join(BROWSERS)}): apt-get install "
                           "chromium")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={png.resolve()}",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return png


def plot_pixels(png: Path, tolerance: int = 8) -> dict[str, int]:
    """Pixels within ``tolerance`` of each plot colour."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return {name: int((np.abs(rgb - colour).max(axis=2) <= tolerance).sum())
            for name, colour in PLOT_COLOURS.items()}


def plots_shown(png: Path) -> bool:
    return all(n >= MIN_PIXELS for n in plot_pixels(png).values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--png", type=Path, help="where to save the screenshot (default: beside "
                    "the HTML file)")
    args = ap.parse_args()
    png = screenshot(args.html, args.png or args.html.with_suffix(".png"))
    counts = plot_pixels(png)
    print(f"{png}: plot-colour pixels {counts}; plots shown: {plots_shown(png)}")
    return 0 if plots_shown(png) else 1


if __name__ == "__main__":
    sys.exit(main())
