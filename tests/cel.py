"""CEL as kube-apiserver evaluates it for admission.

cel-expr-python wraps Google's C++ CEL, which implements the same language definition as the apiserver's cel-go
(heterogeneous equality: `1 == 1.0` is true and `true == 1` false; a missing map key is an error). The variables
are dynamic, as in webhook matchConditions: `object`, `oldObject`, `request` and, in a policy, `variables`. No
Kubernetes-only library is loaded, so an expression that needs one fails to compile here.
"""

from __future__ import annotations

import functools

from cel_expr_python import cel

VARIABLES = ("object", "oldObject", "request", "variables")
_ENV = cel.NewEnv(variables={name: cel.Type.DYN for name in VARIABLES})


class CelError(Exception):
    """A compile or evaluation error: for the apiserver, a failed call under the failure policy."""


@functools.lru_cache(maxsize=None)
def compile_expression(expression: str):
    try:
        return _ENV.compile(expression)
    except RuntimeError as err:
        raise CelError(f"compile error: {err}") from None


def evaluate(expression: str, **activation) -> object:
    result = compile_expression(expression).eval(data={name: activation.get(name) for name in VARIABLES})
    if result.type() == cel.Type.ERROR:
        raise CelError(f"expression {expression[:60]!r}... resulted in error: {result.value()}")
    return result.plain_value()


def is_true(expression: str, **activation) -> bool:
    value = evaluate(expression, **activation)
    if not isinstance(value, bool):
        raise CelError(f"expression {expression[:60]!r}... is not a bool: {value!r}")
    return value
