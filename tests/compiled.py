"""The modules setup.py compiles with mypyc: whether a source tree holds them, and holds them for its sources.

Python imports a compiled module before the source beside it, so a compiled module older than its source runs
code that is no longer there: the tests would pass or fail for code nobody can read.
"""

from __future__ import annotations

import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "webhook__mypyc"  # the code of every compiled module, at the tree's root; each module loads it by name


def built(tree: Path, module: str) -> Path | None:
    """The compiled module `module` (`webhook/<module>.<platform>.so`) or `LIBRARY` in `tree`, if there is one."""
    folder, name = (tree, module) if module == LIBRARY else (tree / "webhook", module)
    found = [folder / f"{name}{suffix}" for suffix in EXTENSION_SUFFIXES if (folder / f"{name}{suffix}").exists()]
    return found[0] if found else None


def listed(tree: Path) -> tuple[str, ...]:
    """The modules `tree`'s own pyproject.toml has compiled; none for a tree from before they were, or without one."""
    pyproject = tree / "pyproject.toml"
    if not pyproject.is_file():
        return ()
    return tuple(tomllib.loads(pyproject.read_text()).get("tool", {}).get("upgrade-guard", {}).get("compiled", ()))


COMPILED = listed(ROOT)


def problems(tree: Path) -> list[str]:
    """What keeps `tree` from running as it is installed: a module its pyproject.toml compiles that is not
    compiled, one older than its source, or modules without the library that holds their code. A tree whose
    pyproject.toml compiles nothing (or a bare package) runs as plain Python, as installed."""
    found = [f"webhook/{module} is not compiled" for module in listed(tree) if not built(tree, module)]
    for module in sorted({path.name.split(".")[0] for path in (tree / "webhook").glob("*.so")}):
        source, compiled = tree / "webhook" / f"{module}.py", built(tree, module)
        if compiled and source.exists() and compiled.stat().st_mtime < source.stat().st_mtime:
            found.append(f"webhook/{module} is older than its source")
    if not built(tree, LIBRARY) and any((tree / "webhook").glob("*.so")):
        found.append(f"compiled modules without {LIBRARY} beside them")
    return found
