"""`python -m bench.layers`: where a review's cost goes in the guard's own code, layer by layer.

The load benchmark says how far the guard is from the ceiling; this says in which layer the difference is
spent. Each layer adds to the one above it, serving the dismissal review (the issue's workload) in process to a
WSGI stack built as `GuardServer.load` builds it: the ceiling app; the guard's app with its log line off; the
log line; the metrics layer and the environ adapter (the whole app as a worker runs it).

On a shared machine, timings of a few microseconds are noise, so the cost is counted in instructions, with
valgrind (Debian's `valgrind`, in the machine image): each layer runs in a fresh interpreter for two numbers
of reviews (fixed hash seed), and the difference divided by the difference in reviews is exact and repeats
to the instruction. Without valgrind it falls back to the median CPU time per review over rounds.
"""

from __future__ import annotations

import argparse
import atexit
import io
import json
import logging
import logging.config
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from bench import ceiling
from bench.workloads import workloads
from webhook.app import create_app
from webhook.config import Config
from webhook.gunicorn_environ import for_the_app
from webhook.logs import logging_dict
from webhook.metrics import instrumented
from webhook.multiproc import MetricsDirectory

LAYERS = ("ceiling: parse, answer allowed", "guard: decision and answer, no log line",
          "guard: + the review's log line", "guard: + metrics and the environ adapter (as served)")
FEW, MANY, WARM_UP = 100, 500, 50


def stack(layer: int) -> Callable[[], bytes]:
    """One review served by the stack of `layer` (0-3), the logging and metrics set up as in a worker."""
    metrics = MetricsDirectory.open()  # a private directory, removed when the process exits
    atexit.register(metrics.close)
    logging.config.dictConfig(logging_dict("info"))
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger().handlers:
        handler.setStream(sink)  # the line is made and written; where to is not the guard's cost
    logging.disable(logging.INFO if layer == 1 else logging.NOTSET)

    config = Config()
    endpoint = create_app(config).wsgi_app  # what the worker serves, as GuardServer.load takes it
    whole = for_the_app(instrumented(endpoint, config, lambda: None, metrics.path), False)
    served = (ceiling.answer, endpoint, endpoint, whole)[layer]
    workload = workloads()[0]

    def review() -> bytes:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": workload.path, "CONTENT_TYPE": "application/json",
                   "CONTENT_LENGTH": str(len(workload.body)), "wsgi.input": io.BytesIO(workload.body),
                   "wsgi.input_terminated": True}
        return b"".join(served(environ, lambda status, headers: None))

    answer = json.loads(review())["response"]
    if answer["allowed"] is not (layer == 0):  # the ceiling allows everything; the guard denies this write
        raise RuntimeError(f"layer {layer} answered the dismissal wrongly: {answer}")
    return review


def instructions(valgrind: str, layer: int, reviews: int) -> int:
    """Instructions a fresh interpreter executes to serve `reviews` reviews (after the warm-up) on `layer`."""
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.layers",
               "--serve", str(layer), "--calls", str(reviews)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return int(re.search(r"Collected : (\d+)", done.stderr).group(1))


def counted(valgrind: str) -> list[float]:
    """Instructions per review, in thousands, layer by layer (two interpreters at a time)."""
    with ThreadPoolExecutor(2) as pool:
        runs = {(layer, n): pool.submit(instructions, valgrind, layer, n) for layer in range(len(LAYERS))
                for n in (FEW, MANY)}
        return [(runs[layer, MANY].result() - runs[layer, FEW].result()) / (MANY - FEW) / 1000
                for layer in range(len(LAYERS))]


def timed(rounds: int = 7, calls: int = 2000) -> list[float]:
    """Median CPU microseconds per review, layer by layer, each in a fresh interpreter."""
    costs = []
    for layer in range(len(LAYERS)):
        done = subprocess.run([sys.executable, "-m", "bench.layers", "--serve", str(layer), "--calls", str(calls),
                               "--rounds", str(rounds)], capture_output=True, text=True, check=True)
        costs.append(float(done.stdout.split()[-1]))
    return costs


def serve(layer: int, calls: int, rounds: int) -> None:
    review = stack(layer)
    for _ in range(WARM_UP):
        review()
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            review()
        results.append((time.process_time() - started) / max(calls, 1) * 1e6)
    print(statistics.median(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, choices=range(len(LAYERS)), help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=FEW, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help="CPU time per review even when valgrind is there")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.calls, args.rounds)
        return 0

    valgrind = None if args.timed else shutil.which("valgrind")
    costs, unit = (counted(valgrind), "k instructions") if valgrind else (timed(), "µs of CPU")
    print(f"{workloads()[0].name}, per review, in {unit}" + ("" if valgrind else " (median of 7 rounds)"))
    previous = None
    for name, cost in zip(LAYERS, costs):
        step = "" if previous is None else f"  ({cost - previous:+.0f})"
        print(f"{cost:8.0f}  {name}{step}")
        previous = cost
    return 0


if __name__ == "__main__":
    sys.exit(main())
