"""The ceiling reference: `upgrade-guard serve` exactly as deployed, with the guard's app swapped for the least
an admission webhook can do: read the body, parse it with the guard's JSON codec (webhook/jsoncodec.py),
answer `allowed: true`.

Same command line, settings, gunicorn worker type and count, TLS context and logging as the guard, so the
guard's figures divided by these are what the guard itself costs, whatever else the machine is doing.
Run as `python -m bench.ceiling serve --cert-dir DIR ...`, with any `upgrade-guard serve` flag.
"""

from __future__ import annotations

import sys

from webhook import cli, jsoncodec, server


def answer(environ: dict, start_response) -> list[bytes]:
    if environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        review = jsoncodec.loads(environ["wsgi.input"].read(length))
        body = jsoncodec.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview",
                                "response": {"uid": review["request"]["uid"], "allowed": True}})
    else:  # /healthz, /readyz
        body = b'{"status":"ready"}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def main(argv: list[str]) -> int:
    server.GuardServer.load = lambda self: answer
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
