"""The HTML report opened in a real browser: headless Chromium (Debian's ``chromium``, installed by .ci/run)."""

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from ssmlab.bench.efficiency import Measurement, store_measurements
from ssmlab.report import build_report
from ssmlab.store import ResultStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the page: once everything has loaded, record each image's decoded width
# (0 for an image the browser could not decode) and mark the page as checked.
PROBE = """<script>window.addEventListener("load", function () {
  for (const img of document.images) { img.setAttribute("data-natural-width", img.naturalWidth); }
  document.body.setAttribute("data-checked", "yes");
});</script>"""


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.checked, self.tables, self.rows, self.images, self.captions = False, 0, [], [], 0
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.checked = attrs.get("data-checked") == "yes"
        elif tag == "table":
            self.tables += 1
            self.rows.append(0)
        elif tag == "tr":
            self.rows[-1] += 1
        elif tag == "img":
            self.images.append((attrs.get("alt"), int(attrs.get("data-natural-width", -1))))
        elif tag == "figcaption":
            self.captions += 1


def _fill(store):
    env = {"torch_version": "test"}
    runs = [("quick", "mqar", {"vocab_size": 64}, "test_accuracy", {"mamba": (0.8, 0.9), "s4d": (0.3, 0.35)}),
            ("quick", "selective-copying", {}, "test_accuracy", {"mamba": (0.95, 0.97), "s4d": (0.2, 0.25)}),
            ("timeseries", "forecast-co2", {}, "test_mse", {"mamba": (0.2, 0.25), "s4d": (0.3, 0.28)})]
    for suite, task, options, metric, per_model in runs:
        for model, values in per_model.items():
            for seed, value in enumerate(values):
                config = {"run": {"mixer": model, "task": task, "task_options": options, "seed": seed}}
                run = store.start_run(suite=suite, model=model, task=task, seed=seed, config=config, environment=env)
                rate = 0.97 if model == "mamba" else 0.99
                curve = [(s, "train", "loss", 3.0 * rate ** s + 0.05 * ((s * 7919 + seed) % 13) / 13)
                         for s in range(0, 200, 4)]
                store.finish_run(run, metrics={metric: value}, n_params=5000 if model == "mamba" else 3000,
                                 wall_time_s=2.0, peak_memory_mb=None, curves=curve)
    store_measurements(store, [Measurement(m, n, 1, 8, t * n, 2 * t * n, 1.0, 1.0, 10)
                               for m, t in (("attention", 1e-3), ("mamba", 2e-3)) for n in (64, 256)],
                       environment=env)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        _fill(store)
        paths = build_report(store, tmp_path / "out")
    page = paths["html"].read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Page()
    dom.feed(proc.stdout)
    assert dom.checked, "the page's load event never ran"
    # Two suites and the efficiency summary, each a table with a header and its rows.
    assert dom.tables == 3 and all(rows >= 3 for rows in dom.rows), dom.rows
    # Per suite the curves' small multiples and the metric against parameters; the efficiency figure.
    assert len(dom.images) == len(paths["figures"]) == 5 == dom.captions
    broken = [alt for alt, width in dom.images if width <= 0]
    assert not broken, f"images the browser could not decode: {broken}"
