from __future__ import annotations

import importlib

import pytest

from tests import compiled
from tests.guard import Guard
from webhook import certs

REBUILD = "build them: .venv/bin/pip install -e '.[test]' (the README's test command does)"


def pytest_configure(config):
    """The tests run the modules as installed: compiled (setup.py), and from this tree's sources."""
    wrong = compiled.problems(compiled.ROOT)
    for module in compiled.COMPILED:
        path = compiled.built(compiled.ROOT, module)
        if path and importlib.import_module(f"webhook.{module}").__file__ != str(path):
            wrong.append(f"webhook.{module} is imported from elsewhere than {path}")
    if wrong:
        raise pytest.UsageError(f"{'; '.join(wrong)}: {REBUILD}")


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory):
    """A CA and a serving certificate for the Service name and for 127.0.0.1, as `certs --san` makes them."""
    out = tmp_path_factory.mktemp("certs")
    certs.write_bundle(out, certs.service_names() + ["localhost", "127.0.0.1"])
    return out


@pytest.fixture(scope="session")
def guard(cert_dir):
    """One running guard with default settings, shared by the end-to-end tests that only read from it."""
    with Guard(cert_dir) as running:
        yield running


def pytest_terminal_summary(terminalreporter):
    from tests.figures import FIGURES

    if FIGURES.lines():
        terminalreporter.section("hardening figures")
        for line in FIGURES.lines():
            terminalreporter.write_line(line)


@pytest.fixture
def bare_api(tmp_path):
    """The in-test Kubernetes API with both webhook configurations as the manifests apply them: no caBundle."""
    from tests import objects
    from tests.kubeapi import KubeApi

    with KubeApi(tmp_path) as api:
        for configuration in objects.configurations():
            api.put(configuration)
        yield api
