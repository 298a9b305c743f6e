# Portico container image: `portico controller` as UID 65532 on a slim Python runtime.
# Stage 1 builds Portico and its dependencies into a virtualenv (compilers available for any
# dependency without a wheel); stage 2 copies only that virtualenv onto the slim image.

# Both stages use the same Python build: the virtualenv links to /usr/local/bin/python3.11.
FROM python:3.11.14-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/portico
# setup.py compiles the proxy's request path with mypyc (gcc is in this stage's image). A compile
# that fails leaves a plain-Python install at half the speed, so the build then stops: the check
# imports the installed package (-P: not the sources in /src) and exits 1 unless compiled.
COPY pyproject.toml setup.py README.md ./
COPY controller ./controller
COPY proxy ./proxy
COPY conformance ./conformance
RUN /opt/portico/bin/pip install --no-cache-dir . \
    && /opt/portico/bin/python -P -c "import sys, proxy.native; sys.exit(proxy.native.require_compiled())" \
    && /opt/portico/bin/python -m compileall -q /opt/portico/lib

FROM python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="portico" \
      org.opencontainers.image.description="Kubernetes Ingress controller and HTTP reverse proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The root filesystem is read-only in the pod: never write bytecode next to the sources, and
# point HOME at /tmp (the chart's one writable mount) since UID 65532 has no passwd entry.
ENV PATH="/opt/portico/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/portico /opt/portico
# 65532 is the conventional "nonroot" UID; ports 8080/8443/10254 need no capability.
USER 65532:65532
EXPOSE 8080 8443 10254
STOPSIGNAL SIGTERM
ENTRYPOINT ["portico", "controller"]
