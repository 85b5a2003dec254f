"""`dvc plots show` with the repo's .dvc/config renders offline: the page it writes loads
nothing from the network (Vega, Vega-Lite and Vega-Embed are inlined by
.dvc/plots_template.html), and headless Chromium with every name lookup failing draws the
confusion matrix and the training curves."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

BIN = Path(sys.executable).parent
DVC = BIN / "dvc"
INSTALLER = "tools/install_test_packages.sh"
# The flags every headless Chromium in the tests gets; name lookups all fail, so a page
# that needed the network would stay blank.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
                  "--window-size=1000,700")
DVC_YAML = """\
plots:
  - reports/predictions.csv:
      template: confusion
      x: actual
      y: predicted
  - Training curves (accuracy):
      x: epoch
      y:
        reports/history.csv: [accuracy, val_accuracy]
"""
HISTORY = "epoch,accuracy,val_accuracy\n1,0.5,0.45\n2,0.7,0.6\n3,0.8,0.72\n4,0.9,0.8\n"
# actual cat: 2 right, 1 as dog; actual dog: 3 right, 1 as cat
PREDICTIONS = "actual,predicted\n" + "".join(
    f"{a},{p}\n" for a, p in [("cat", "cat")] * 2 + [("cat", "dog"), ("dog", "cat")]
    + [("dog", "dog")] * 3)

pytestmark = pytest.mark.skipif(not DVC.exists(), reason="needs dvc in the virtualenv")


class _Links(HTMLParser):
    """Every src and href attribute of the page's elements (script bodies are not markup)."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def _template_builder():
    spec = importlib.util.spec_from_file_location("build_plots_template",
                                                  REPO / "tools" / "build_plots_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """``dvc plots show`` in a tiny project with the repo's .dvc/config and template."""
    root = tmp_path_factory.mktemp("plots")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    for name in ("config", "plots_template.html"):
        shutil.copy2(REPO / ".dvc" / name, root / ".dvc" / name)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "reports").mkdir()
    (root / "reports" / "history.csv").write_text(HISTORY)
    (root / "reports" / "predictions.csv").write_text(PREDICTIONS)
    proc = subprocess.run([str(DVC), "plots", "show", "-o", "out"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "out" / "index.html"


def test_the_plots_page_loads_nothing_from_the_network(page):
    html = page.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(html)
    remote = [link for link in parser.links if link.lower().startswith(("http:", "https:", "//"))]
    assert remote == []
    assert "cdn" not in html.lower()
    # the committed template is what tools/build_plots_template.py makes of its pins, in
    # the majors dvc-render writes its specs for
    pins = {name: version for name, version, _, _ in _template_builder().PACKAGES}
    assert [pins[p].split(".")[0] for p in ("vega", "vega-lite", "vega-embed")] == ["5", "5", "6"]
    for name, version in pins.items():
        assert f"<script>/* {name}@{version} */" in html
    assert html.count("vegaEmbed('#") == 2  # both plots are on the page


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def test_headless_chromium_draws_both_plots_offline(page, tmp_path):
    if shutil.which("chromium") is None:
        pytest.fail(f"chromium is not installed, so the plots could not be looked at: {INSTALLER} "
                    "installs Debian's package (make test runs it; it needs root and apt-get)")
    dom = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert dom.stdout.count('class="marks"') == 2  # Vega drew a canvas for each plot

    screenshot = tmp_path / "plots.png"
    shot = _chromium(f"--screenshot={screenshot}", page.as_uri(), profile=tmp_path / "profile")
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-3000:]
    rgb = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    # Coloured pixels (not white, grey or black text): the heatmap cells and the curves.
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    left, right = coloured[:, :420], coloured[:, 420:]
    assert left.mean() > 0.05, "no confusion matrix drawn"
    assert right.sum() > 500, "no training curves drawn"
    # The confusion matrix's darkest cell (3 dogs) is a dark blue.
    dark_blue = (rgb[..., 2] > 100) & (rgb[..., 0] < 60) & (rgb[..., 1] < 60)
    assert dark_blue[:, :420].sum() > 5000
