"""`python -m bench`: the guard under the load kube-apiserver puts on it, beside a ceiling reference.

Starts `upgrade-guard serve` as deployed (TLS, default workers and worker type) and the ceiling reference
(the same command with a do-nothing app, see bench/ceiling.py), drives both with wrk (HTTP/1.1 keep-alive
over TLS, POSTs of AdmissionReviews), alternating guard and ceiling run by run so both see the same machine,
and prints a Markdown table: reviews/s, p50/p99 latency, ratios to the ceiling (medians over the runs),
per-worker memory, time to ready, and the in-process cost per object size.

With `--reference TREE`, the reference is the guard of another source tree (a git worktree of an earlier
commit, say) instead of the ceiling: the same figures then say whether a change made the guard cheaper, in
the server, beside the code before it.

Exit 0 when every figure was measured, 3 when no load generator could be had, 1 when an answer was wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import micro
from bench.workloads import Workload, workloads
from tests import compiled
from tests.guard import Guard
from webhook import certs
from webhook.settings import SERVE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NO_LOAD_GENERATOR = 3


class Failed(Exception):
    """A figure that cannot be trusted: a wrong answer, errors under load, a server that would not start."""


def find_wrk(install: bool) -> str | None:
    """wrk on PATH, else Debian's, installed when we may (root, apt-get present)."""
    found = shutil.which("wrk")
    if found or not install or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    print("installing wrk with apt-get ...", file=sys.stderr)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, **quiet)
    return shutil.which("wrk")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time used so far by these processes (utime and stime of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Server:
    """A running guard or ceiling, with what was measured about it outside the load runs."""

    def __init__(self, name: str, cert_dir: Path, program: list[str] | None, env: dict, args: list[str],
                 judged: bool = True):
        self.name = name
        self.judged = judged  # answers as a guard must; the ceiling allows everything
        self.guard = Guard(cert_dir, *args, env=env, program=program, output=cert_dir.parent / f"{name}.log")
        started = time.perf_counter()
        self.guard.start()
        self.ready_s = time.perf_counter() - started
        self.guard.settle(expected_workers(args))
        self.idle_rss = self.worker_rss()

    @property
    def port(self) -> int:
        return self.guard.port

    def pids(self) -> list[int]:
        assert self.guard.process
        return [self.guard.process.pid, *self.guard.workers()]

    def worker_rss(self) -> list[float]:
        return [size / 2**20 for size in self.guard.worker_memory()]

    def check(self, workload: Workload) -> None:
        """One review answered as a correct guard answers it, or the figures mean nothing."""
        connection = self.guard.connect(timeout=30)
        status, _, answer = connection.review(workload.path, workload.body)
        connection.close()
        response = answer.get("response", {}) if isinstance(answer, dict) else {}
        expected = workload.allowed if self.judged else True
        if status != 200 or response.get("allowed") is not expected:
            raise Failed(f"{self.name} answered {workload.name} wrongly: {status} {str(answer)[:300]}")
        if self.judged and workload.patched != ("patch" in response):
            raise Failed(f"{self.name} answered {workload.name} without the expected patch: {str(answer)[:300]}")

    def stop(self) -> None:
        self.guard.stop()


def expected_workers(serve_args: list[str]) -> int:
    """The worker count `serve` runs with these flags: the last --workers given, else the default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workers", type=int, default=next(s.default for s in SERVE if s.name == "workers"))
    return parser.parse_known_args(serve_args)[0].workers


def load(wrk: str, server: Server, workload: Workload, body_file: Path, args: argparse.Namespace) -> dict:
    command = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "10s",
               "-s", str(HERE / "post.lua"), f"https://127.0.0.1:{server.port}{workload.path}?timeout=10s"]
    pids = server.pids()
    cpu_before = cpu_seconds(pids)
    done = subprocess.run(command, env={**os.environ, "BENCH_BODY": str(body_file)}, capture_output=True,
                          text=True, timeout=args.duration + 60)
    cpu = cpu_seconds(pids) - cpu_before
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise Failed(f"wrk failed on {server.name}: {done.stdout[-500:]} {done.stderr[-500:]}")
    figures = json.loads(lines[-1][len("BENCH "):])
    if figures["errors"] or figures["status_errors"] or not figures["requests"]:
        raise Failed(f"{server.name} had errors under load on {workload.name}: {figures}")
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["cpu_us"] = cpu / figures["requests"] * 1e6  # the server's CPU time per review: robust to noise
    return figures


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Where the median of what was sampled lies, at `confidence` or more, assuming nothing of the noise's shape:
    the k-th smallest and k-th largest values, k the largest for which the chance that fewer than k of n values
    fall below the median (binomial, p = 1/2) stays within (1 - confidence) / 2. Too few values: all of them."""
    ordered = sorted(values)
    n, below, k = len(ordered), 0.0, 0
    while k < n // 2:
        below += math.comb(n, k) / 2**n  # P(exactly k values below the median)
        if below > (1 - confidence) / 2:
            break
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def compare(wrk: str, guard: Server, ceiling: Server, workload: Workload, body_file: Path,
            args: argparse.Namespace) -> dict:
    """Alternate guard and ceiling runs (which goes first alternates too); ratios are taken run by run."""
    guard_runs, ceiling_runs = [], []
    for index in range(args.runs):
        pair = (guard, ceiling) if index % 2 == 0 else (ceiling, guard)
        for server in pair:
            (guard_runs if server is guard else ceiling_runs).append(load(wrk, server, workload, body_file, args))
    ratios = [g["rps"] / c["rps"] for g, c in zip(guard_runs, ceiling_runs, strict=True)]
    cpu_ratios = [c["cpu_us"] / g["cpu_us"] for g, c in zip(guard_runs, ceiling_runs, strict=True)]
    keys = ("rps", "p50_us", "p99_us", "cpu_us")
    return {
        "workload": workload.name, "bytes": workload.size,
        "guard": {key: median(guard_runs, key) for key in keys},
        ceiling.name: {key: median(ceiling_runs, key) for key in keys},
        "ratio": statistics.median(ratios), "ratio_interval": median_interval(ratios), "ratios": ratios,
        "cpu_ratio": statistics.median(cpu_ratios), "runs": {"guard": guard_runs, ceiling.name: ceiling_runs},
    }


def check_reference(tree: Path) -> None:
    """A tree runs as it is installed: plain Python, or compiled by its own build, no older than its sources."""
    if not (tree / "webhook" / "__init__.py").is_file():
        raise Failed(f"--reference {tree}: no webhook package there")
    wrong = compiled.problems(tree)
    if wrong:
        raise Failed(f"--reference {tree}: {'; '.join(wrong)}: build them in that tree (python3 -m venv .venv && "
                     f".venv/bin/pip install -q -e .)")


def reference(tree: Path, scratch: Path, serve_args: list[str]) -> Server:
    """The guard of another source tree. `-P`: the current directory, which may hold this tree's `webhook`,
    must not come before that tree on the import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    return Server("reference", scratch / "certs", [sys.executable, "-P", "-m", "webhook"], env, serve_args)


def size_text(size: int) -> str:
    return f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.1f} KiB"


def machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), {memory:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def report(results: list[dict], guard: Server, ceiling: Server, guard_busy: list[float], small: list[dict],
           args: argparse.Namespace) -> str:
    other = ceiling.name  # "ceiling", or "reference" (another tree's guard)
    lines = [
        f"Machine: {machine()}; wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"median of {args.runs} runs, guard and {other} alternating; the ratio's interval holds the median "
        f"of such runs with 95 % confidence or more.",
        "",
        f"| workload | body | guard reviews/s | {other} reviews/s | ratio (95 % interval) | guard p50 ms "
        f"| guard p99 ms | {other} p50 ms | {other} p99 ms | server CPU per review, guard / {other} | CPU ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        g, c = r["guard"], r[other]
        low, high = r["ratio_interval"]
        lines.append(f"| {r['workload']} | {size_text(r['bytes'])} | {g['rps']:.0f} | {c['rps']:.0f} "
                     f"| {r['ratio']:.2f} ({low:.2f}-{high:.2f}) | {ms(g['p50_us'])} | {ms(g['p99_us'])} "
                     f"| {ms(c['p50_us'])} | {ms(c['p99_us'])} | {ms(g['cpu_us'])} / {ms(c['cpu_us'])} ms "
                     f"| {r['cpu_ratio']:.2f} |")
    lines += [
        "",
        "| server | ready after start | RSS per worker, idle (MiB) | RSS per worker, after the load (MiB) |",
        "| --- | --- | --- | --- |",
        f"| guard | {guard.ready_s:.2f} s | {mib(guard.idle_rss)} | {mib(guard_busy)} |",
        f"| {other} | {ceiling.ready_s:.2f} s | {mib(ceiling.idle_rss)} | {mib(ceiling.worker_rss())} |",
        "",
        "| stored object | nodes | decision + patch (dismissal, /mutate) | decision (kubectl label) "
        "| parse the dismissal review |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in small:
        cells = [per_kib(row[key], row["object_bytes"]) for key in ("dismissal_patch_s", "label_decision_s", "parse_s")]
        lines.append(f"| {size_text(row['object_bytes'])} | {row['nodes']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.2f}"


def mib(values: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values) or "?"


def per_kib(seconds: float, size: int) -> str:
    return f"{seconds * 1000:.3f} ms ({seconds * 1e6 / (size / 1024):.1f} µs/KiB)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run [%(default)s]")
    parser.add_argument("--runs", type=int, default=15, help="wrk runs per workload and server [%(default)s]")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections [%(default)s]")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads [%(default)s]")
    parser.add_argument("--big", type=int, default=1024 * 1024, help="big-cluster review size, bytes [%(default)s]")
    parser.add_argument("--micro-sizes", default="10240,102400,1048576",
                        help="stored object sizes for the in-process benchmark, bytes [%(default)s]")
    parser.add_argument("--micro-budget", type=float, default=0.5, help="seconds per in-process figure [%(default)s]")
    parser.add_argument("--serve-args", default="",
                        help="more `upgrade-guard serve` flags for both servers, e.g. '--workers 3' [none: defaults]")
    parser.add_argument("--workloads", default="",
                        help="comma-separated numbers (1-5) of the workloads to run [all]")
    parser.add_argument("--reference", type=Path, metavar="TREE",
                        help="measure against the guard of this source tree instead of the ceiling")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--no-install", action="store_true", help="never install wrk")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run that proves the benchmark works (1 s runs, 1 run, small sizes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.runs, args.connections, args.threads = 1, 1, 2, 1
        args.big, args.micro_sizes, args.micro_budget = 64 * 1024, "10240,20480", 0.05
    args.connections = max(args.connections, args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk(install=not args.no_install)
    if not wrk:
        print("bench: no wrk, and it could not be installed (apt-get install wrk)", file=sys.stderr)
        return NO_LOAD_GENERATOR
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="upgrade-guard-bench-") as tmp:
        scratch = Path(tmp)
        certs.write_bundle(scratch / "certs", certs.service_names() + ["localhost", "127.0.0.1"])
        cases = workloads(big_size=args.big)
        if args.workloads:
            cases = [cases[int(number) - 1] for number in args.workloads.split(",")]
        files = {}
        for index, workload in enumerate(cases):
            files[workload.name] = scratch / f"body-{index}.json"
            files[workload.name].write_bytes(workload.body)
        try:
            unbuilt = compiled.problems(compiled.ROOT)
            if unbuilt:  # the guard is measured as it is installed
                raise Failed(f"{'; '.join(unbuilt)}: build them with pip install -e '.[test]'")
            if args.reference:
                args.reference = args.reference.resolve()
                check_reference(args.reference)
            serve_args = shlex.split(args.serve_args)
            guard = Server("guard", scratch / "certs", None, env, serve_args)
            started.append(guard)
            ceiling = reference(args.reference, scratch, serve_args) if args.reference else Server(
                "ceiling", scratch / "certs", [sys.executable, "-m", "bench.ceiling"], env, serve_args, judged=False)
            started.append(ceiling)
            results = []
            for workload in cases:
                guard.check(workload)
                ceiling.check(workload)
                results.append(compare(wrk, guard, ceiling, workload, files[workload.name], args))
                print(f"measured: {workload.name}: ratio {results[-1]['ratio']:.2f}", file=sys.stderr)
            guard_busy = guard.worker_rss()
            small = micro.run(tuple(int(s) for s in args.micro_sizes.split(",") if s), args.micro_budget)
            print(report(results, guard, ceiling, guard_busy, small, args))
            if args.json:
                args.json.write_text(json.dumps({
                    "machine": machine(), "load": results, "micro": small,
                    "ready_s": {s.name: s.ready_s for s in started},
                    "idle_rss_mib": {s.name: s.idle_rss for s in started}, "busy_rss_mib": guard_busy,
                }, indent=2))
        except Failed as err:
            print(f"bench: {err}", file=sys.stderr)
            return 1
        finally:
            for server in started:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
