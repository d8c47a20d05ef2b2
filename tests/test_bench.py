"""The benchmark runs end to end, once, in its tiny configuration. No timing is asserted: the machine is shared."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import NO_LOAD_GENERATOR, median_interval

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
        assert 0 < row["ratio_interval"][0] <= row["ratio"] <= row["ratio_interval"][1]
    assert [row["object_bytes"] >= 10240 for row in figures["micro"]] == [True, True]
    assert all(row["dismissal_patch_s"] > 0 and row["label_decision_s"] > 0 for row in figures["micro"])
    assert figures["ready_s"]["guard"] > 0 and figures["idle_rss_mib"]["guard"]
    assert "| dismissal, /validate (denied) |" in done.stdout and "ready after start" in done.stdout


def test_the_ratio_interval_is_the_order_statistics_a_binomial_allows():
    """The k-th smallest and largest of n: P(at most k-1 of n below the median) <= 2.5 %, k as large as that
    allows (n = 9: P(B <= 1) = 10/512, P(B <= 2) = 46/512; n = 21: P(B <= 5) = 0.013, P(B <= 6) = 0.039)."""
    assert median_interval([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0]) == (2.0, 8.0)
    assert median_interval([float(v) for v in range(21)]) == (5.0, 15.0)
    assert median_interval([float(v) for v in range(15)]) == (3.0, 11.0)
    assert median_interval([0.9, 0.8, 1.0, 0.7, 0.95]) == (0.7, 1.0), "too few for 95 %: all of them"
    assert median_interval([0.88]) == (0.88, 0.88)


@pytest.mark.parametrize("layer", range(4))
def test_every_layer_serves_the_dismissal_as_its_app_would(layer):
    """bench.layers checks the answer of each stack it counts (the ceiling allows, the guard denies) and says
    what one review cost; here in a few reviews, without valgrind."""
    done = subprocess.run([sys.executable, "-m", "bench.layers", "--serve", str(layer), "--calls", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) > 0


def _bench(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--workloads", "1", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if done.returncode == NO_LOAD_GENERATOR:
        pytest.skip("wrk is not installed and could not be installed")
    return done


def test_a_reference_tree_is_measured_with_its_own_code(tmp_path):
    """`--reference TREE` serves that tree's guard, even though the benchmark runs in this tree's directory: a
    tree whose guard lets the dismissal through is caught answering wrongly, an unchanged copy is measured. The
    copies are plain Python (their sources without this tree's compiled modules)."""
    plain = shutil.ignore_patterns("*.so")
    shutil.copytree(ROOT / "webhook", tmp_path / "same" / "webhook", ignore=plain)
    figures_file = tmp_path / "figures.json"
    done = _bench("--reference", str(tmp_path / "same"), "--json", str(figures_file))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| reference reviews/s |" in done.stdout and "guard and reference alternating" in done.stdout
    row = json.loads(figures_file.read_text())["load"][0]
    assert row["reference"]["rps"] > 0 and row["ratio"] > 0

    shutil.copytree(ROOT / "webhook", tmp_path / "lenient" / "webhook", ignore=plain)
    decision = tmp_path / "lenient" / "webhook" / "decision.py"
    decision.write_text(decision.read_text().replace('KIND: Final = "Upgrade"', 'KIND: Final = "NotAnUpgrade"'))
    done = _bench("--reference", str(tmp_path / "lenient"))
    assert done.returncode == 1 and "reference answered dismissal, /validate (denied) wrongly" in done.stderr


def test_a_reference_tree_that_does_not_run_as_installed_is_refused(tmp_path):
    """A compiled module older than its source would serve code the tree no longer has, and a tree without the
    modules its pyproject.toml compiles would run as plain Python: both refused before any run."""
    shutil.copytree(ROOT / "webhook", tmp_path / "stale" / "webhook")  # compiled modules and their times too
    shutil.copy2(next(ROOT.glob("webhook__mypyc.*")), tmp_path / "stale")
    decision = tmp_path / "stale" / "webhook" / "decision.py"
    decision.write_text(decision.read_text().replace('KIND: Final = "Upgrade"', 'KIND: Final = "NotAnUpgrade"'))
    done = _bench("--reference", str(tmp_path / "stale"))
    assert done.returncode == 1 and "webhook/decision is older than its source" in done.stderr, done.stderr[-2000:]
    assert "measured:" not in done.stderr

    # A tree that compiles its review path, checked out without building it, would be measured as plain Python.
    shutil.copytree(ROOT / "webhook", tmp_path / "unbuilt" / "webhook", ignore=shutil.ignore_patterns("*.so"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "unbuilt")
    done = _bench("--reference", str(tmp_path / "unbuilt"))
    assert done.returncode == 1 and "webhook/values is not compiled" in done.stderr, done.stderr[-2000:]
