"""The review path compiled to C with mypyc, as the guard is installed: the pure core and the code that serves it.

Every write to an Upgrade waits on the guard, and most of what the guard adds to a review is the interpreter
running these modules: compiled, the same source costs far fewer instructions (README, Performance). The list
is `[tool.upgrade-guard] compiled` in pyproject.toml, which the tests also read: they check that what they
import is the compiled module, and one no older than its source. The rest of the package is plain Python.
"""

import os
import tomllib
from pathlib import Path

from mypyc.build import mypycify
from setuptools import setup

ROOT = Path(__file__).resolve().parent
COMPILED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["upgrade-guard"]["compiled"]

# The build environment holds mypy and setuptools only: the guard's dependencies (werkzeug, gunicorn) are typed
# as Any there, and no mypy cache is read (a developer's could hold their types): the same build everywhere.
setup(ext_modules=mypycify(["--ignore-missing-imports", "--cache-dir", os.devnull,
                            *(f"webhook/{name}.py" for name in COMPILED)], opt_level="3", group_name="webhook"))
