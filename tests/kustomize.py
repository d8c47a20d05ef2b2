"""Render a kustomization as `kubectl kustomize` does.

The real tool is used when the machine has it (kubectl, or a standalone kustomize). Without one, `render_subset`
renders the part of kustomize that `manifests/` uses (resources: files and directories; patches: inline JSON 6902
patches aimed by kind and name) and refuses anything else, so a kustomization that grows past it fails loudly
instead of rendering wrongly; `tests/test_manifests.py` checks the two agree wherever the tool exists.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path

import jsonpatch
import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches"}
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
INSTALLS = {"default": ".", "cert-manager": "overlays/cert-manager", "manual": "overlays/manual",
            "strict": "overlays/strict", "legacy": "overlays/legacy", "policy": "policy"}
# Where the guard keeps its own certificates through the Kubernetes API; the other webhook installs read files.
SELF_MANAGED = ("default", "strict", "legacy")
FILE_MODE = ("cert-manager", "manual")


def tool() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render_with_tool(path: str | Path) -> list[dict]:
    command = tool()
    assert command, "neither kubectl nor kustomize is installed"
    done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} {path} failed:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _aims(target: dict, obj: dict) -> bool:
    return (obj["kind"] == target.get("kind", obj["kind"])
            and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"]))


def render_subset(path: str | Path) -> list[dict]:
    root = Path(path)
    kustomization = _load(root / "kustomization.yaml")[0]
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown or kustomization.get("kind", "Kustomization") != "Kustomization":
        raise NotImplementedError(f"{root}: this renderer does not know {sorted(unknown)}")
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        target = (root / entry).resolve()
        objects += render_subset(target) if target.is_dir() else _load(target)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
            raise NotImplementedError(f"{root}: only inline JSON 6902 patches aimed by kind and name: {patch}")
        operations = jsonpatch.JsonPatch(yaml.safe_load(patch["patch"]))
        aimed = [i for i, o in enumerate(objects) if _aims(patch["target"], o)]
        if not aimed:
            raise ValueError(f"{root}: a patch aims at nothing: {patch['target']}")
        for i in aimed:
            objects[i] = operations.apply(objects[i])
    keys = [(o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{root}: the same object twice")
    return objects


def render(path: str | Path) -> list[dict]:
    return render_with_tool(path) if tool() else render_subset(path)


@functools.lru_cache(maxsize=None)
def _rendered(install: str) -> tuple[dict, ...]:
    return tuple(render(MANIFESTS / INSTALLS[install]))


def rendered(install: str) -> list[dict]:
    """What `kubectl kustomize manifests/<install>` prints, as fresh objects a test may change."""
    return copy.deepcopy(list(_rendered(install)))


def find(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found
