# syntax=docker/dockerfile:1
# upgrade-guard's image. The build stage compiles the review path (setup.py: mypyc, with the C compiler only
# this stage has) and installs the guard and its runtime dependencies into a virtualenv; the final stage holds
# only Python and that virtualenv (no pip, no compiler, no tests), runs as a numeric non-root user, and writes
# nothing at run time, so it runs with a read-only root file system.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY webhook ./webhook
# Bytecode compiled now, checked by hash rather than by file times: nothing to write when it runs.
RUN python -m venv --without-pip /opt/upgrade-guard \
 && pip install --no-compile --python /opt/upgrade-guard/bin/python . \
 && python -m compileall -q --invalidation-mode unchecked-hash /opt/upgrade-guard/lib

FROM ${PYTHON_IMAGE}
RUN python -m pip uninstall --yes --quiet pip setuptools wheel
COPY --from=build /opt/upgrade-guard /opt/upgrade-guard
ENV PATH=/opt/upgrade-guard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UPGRADE_GUARD_CERT_DIR=/etc/upgrade-guard/tls
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["upgrade-guard", "serve"]
