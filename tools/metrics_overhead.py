"""What counting a review costs: the metrics layer (webhook/metrics.py) timed in process, without TLS or HTTP.

    python -m tools.metrics_overhead [ROUNDS]

Prints microseconds per review for the layer alone (around an app that only records its decision) and for
the guard's Flask app with and without the layer, on the example dismissal (examples/dismissal-review.json).
"""

from __future__ import annotations

import io
import logging
import statistics
import sys
import time
from pathlib import Path

from webhook.multiproc import MetricsDirectory

DIRECTORY = MetricsDirectory.open()  # as the server's master does, before prometheus_client is imported

from webhook.app import REVIEW_OUTCOME, create_app  # noqa: E402  (after the variable, as in a worker)
from webhook.config import Config  # noqa: E402
from webhook.metrics import Instrumented  # noqa: E402

BODY = (Path(__file__).resolve().parent.parent / "examples" / "dismissal-review.json").read_bytes()


def _environ(path: str) -> dict:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "guard", "SERVER_PORT": "8443",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "https", "wsgi.errors": sys.stderr,
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)), "wsgi.input": io.BytesIO(BODY)}


def _start_response(status, headers, exc_info=None):
    return None


def _per_review(app, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        b"".join(app(_environ("/validate" if i % 2 else "/mutate"), _start_response))
    return (time.perf_counter() - started) / count * 1e6


def _recording(decision: str, fields: tuple[str, ...]):
    def app(environ, start_response):
        environ[REVIEW_OUTCOME] = (decision, fields)
        return [b""]
    return app


def main(rounds: int) -> None:
    logging.disable(logging.CRITICAL)  # the review log line is not what is measured here
    config = Config()
    cases = (("allowed", "allowed", ()), ("denied, 2 fields", "denied", ("status", "metadata.finalizers")))
    for name, decision, fields in cases:
        stub = _recording(decision, fields)
        layer = Instrumented(stub, config, lambda: None)
        bare = min(_per_review(stub, 20000) for _ in range(rounds))
        counted = min(_per_review(layer, 20000) for _ in range(rounds))
        print(f"layer alone, {name}: {counted - bare:.1f} us per review")
    plain, counted = create_app(config), Instrumented(create_app(config), config, lambda: None)
    _per_review(plain, 200), _per_review(counted, 200)
    times: dict[str, list[float]] = {"without metrics": [], "with metrics": []}
    for _ in range(rounds):  # interleaved, so a busy machine weighs on both alike
        times["without metrics"].append(_per_review(plain, 2000))
        times["with metrics"].append(_per_review(counted, 2000))
    for name, values in times.items():
        print(f"Flask app {name}: median {statistics.median(values):.1f} us, best {min(values):.1f} us per review")


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
    finally:
        DIRECTORY.close()
