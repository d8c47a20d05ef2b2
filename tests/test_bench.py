"""The benchmark runs end to end, once, in its tiny configuration. No timing is asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import NO_LOAD_GENERATOR

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_measures_every_figure(tmp_path):
    figures_file = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(figures_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if done.returncode == NO_LOAD_GENERATOR:
        pytest.skip("wrk is not installed and could not be installed")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert [row["workload"].split(",")[0] for row in figures["load"]] == [
        "dismissal", "dismissal", "kubectl label", "big cluster dismissal", "big cluster kubectl label"]
    for row in figures["load"]:
        for server in ("guard", "ceiling"):
            assert row[server]["rps"] > 0 and 0 < row[server]["p50_us"] <= row[server]["p99_us"]
        assert row["ratio"] > 0
    assert [row["object_bytes"] >= 10240 for row in figures["micro"]] == [True, True]
    assert all(row["dismissal_patch_s"] > 0 and row["label_decision_s"] > 0 for row in figures["micro"])
    assert figures["ready_s"]["guard"] > 0 and figures["idle_rss_mib"]["guard"]
    assert "| dismissal, /validate (denied) |" in done.stdout and "ready after start" in done.stdout


@pytest.mark.parametrize("layer", range(4))
def test_every_layer_serves_the_dismissal_as_its_app_would(layer):
    """bench.layers checks the answer of each stack it counts (the ceiling allows, the guard denies) and says
    what one review cost; here in a few reviews, without valgrind."""
    done = subprocess.run([sys.executable, "-m", "bench.layers", "--serve", str(layer), "--calls", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) > 0
