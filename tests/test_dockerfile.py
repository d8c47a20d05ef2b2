"""The image recipe, checked without a Docker engine: the Dockerfile parsed, its promises held against the
manifests, and the guard run as the image runs it to show it writes nothing."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

from tests.guard import Guard
from tests.kustomize import find, rendered
from webhook import manifests

ROOT = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def stages(parsed: list[tuple[str, str]]) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """The ARGs before the first FROM, and the instructions of each stage, its FROM first."""
    args, found = {}, []
    for instruction, rest in parsed:
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, rest))
        elif instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, found


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for instruction, rest in stage:
        if instruction == "ENV":
            values.update(pair.split("=", 1) for pair in shlex.split(rest))
    return values


def _one(stage: list[tuple[str, str]], name: str) -> str:
    (value,) = [rest for instruction, rest in stage if instruction == name]
    return value


DOCKERFILE = (ROOT / "Dockerfile").read_text()
ARGS, STAGES = stages(instructions(DOCKERFILE))
BUILD, FINAL = STAGES[0], STAGES[-1]


def test_the_parser_reads_continuations_and_skips_comments():
    text = "# a comment\nFROM x AS b\nRUN a \\\n && b\n\nENV A=1 \\\n    B=2\n"
    assert instructions(text) == [("FROM", "x AS b"), ("RUN", "a   && b"), ("ENV", "A=1      B=2")]
    assert _env(stages(instructions(text))[1][0]) == {"A": "1", "B": "2"}


def test_a_slim_python_311_base_pinned_to_a_release():
    base = ARGS["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", base), f"{base} is not pinned to a 3.11.x slim image"
    assert [rest.split()[0] for instruction, rest in (s[0] for s in STAGES)] == ["${PYTHON_IMAGE}"] * len(STAGES)


def test_multi_stage_and_the_final_stage_holds_the_runtime_only():
    assert len(STAGES) >= 2 and BUILD[0][1].endswith(" AS build")
    installs = [rest for instruction, rest in BUILD if instruction == "RUN" and "pip install" in rest]
    assert installs and all(re.search(r"\s\.(\s|$)", r) and "[" not in r for r in installs), \
        "the build stage must install the guard itself, without extras such as [test]"
    assert any("apt-get install" in rest and " gcc " in f"{rest} " for instruction, rest in BUILD
               if instruction == "RUN"), "the build stage needs a C compiler: setup.py compiles the review path"
    copies = [rest for instruction, rest in FINAL if instruction == "COPY"]
    assert copies == ["--from=build /opt/upgrade-guard /opt/upgrade-guard"], "the final stage takes only the venv"
    runs = [rest for instruction, rest in FINAL if instruction == "RUN"]
    assert all("pip uninstall" in r for r in runs), "the final stage installs nothing"


def test_numeric_non_root_user_matches_the_deployment():
    user, _, group = _one(FINAL, "USER").partition(":")
    assert user.isdigit() and group.isdigit() and int(user) > 0
    pod = find(rendered("default"), "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(user), int(group))


def test_entrypoint_port_and_cert_dir_match_the_manifests():
    assert json.loads(_one(FINAL, "ENTRYPOINT")) == ["upgrade-guard", "serve"]
    assert _one(FINAL, "EXPOSE") == str(manifests.PORT)
    assert _env(FINAL)["UPGRADE_GUARD_CERT_DIR"] == manifests.CERT_DIR


def test_read_only_root_file_system_needs_no_writes():
    assert _env(FINAL)["PYTHONDONTWRITEBYTECODE"] == "1"
    assert any("compileall" in rest and "unchecked-hash" in rest for instruction, rest in BUILD if instruction == "RUN")
    assert "VOLUME" not in {instruction for instruction, _ in FINAL}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) or
               (pattern.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pattern[3:]))
               for i in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


PATTERNS = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
            if l.strip() and not l.startswith("#")]


@pytest.mark.parametrize("path", [".git/config", ".venv/bin/python", "tests/test_serve.py", "certs/tls.key",
                                  "manifests/kustomization.yaml", "webhook/__pycache__/cli.cpython-311.pyc",
                                  ".ci/run", "examples/dismissal-review.json", "build/__native_webhook.c",
                                  "webhook/values.cpython-311-x86_64-linux-gnu.so",
                                  "webhook__mypyc.cpython-311-x86_64-linux-gnu.so"])
def test_dockerignore_keeps_out_what_the_image_must_not_hold(path):
    assert dockerignored(path, PATTERNS)


def test_dockerignore_lets_in_every_file_the_build_copies():
    sources = [s for instruction, rest in BUILD if instruction == "COPY" for s in rest.split()[:-1]]
    files = [p.relative_to(ROOT).as_posix() for s in sources for p in
             ([ROOT / s] if (ROOT / s).is_file() else (ROOT / s).rglob("*.py"))]
    assert "webhook/cli.py" in files and "pyproject.toml" in files and "setup.py" in files
    assert not [f for f in files if dockerignored(f, PATTERNS)]


def test_serve_writes_nothing_outside_dev_shm(cert_dir, tmp_path):
    """As the image runs it (no bytecode writes): HOME and the temp dir stay empty while it serves and stops."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {"HOME": str(home), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    with Guard(cert_dir, "--workers", "1", env=env) as running:
        assert running.connect().get("/readyz")[0] == 200
    assert not list(home.iterdir()) and not list(tmp.iterdir())
