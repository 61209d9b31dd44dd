# syntax=docker/dockerfile:1
# The edm image: `edm` on a slim Python, run as a non-root user (UID/GID 10001), the topology
# mounted read-only at /etc/edm and the local state (LMDB stores, the embedded broker) on the
# volume /var/lib/edm. The chart (charts/edm) runs the default command line below.
#
#   docker build -t edm .
#   docker run --rm -v "$PWD/topologies/user-counts:/etc/edm:ro" -v edm-state:/var/lib/edm edm
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Builder: the project and every dependency as wheels (binary wheels where PyPI has them).
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edm_runner ./edm_runner
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# Final stage: the wheels installed from the builder, nothing to build with.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="edm" \
      org.opencontainers.image.description="Declarative topology runner for event-driven microservices"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 edm \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edm --no-create-home \
            --shell /usr/sbin/nologin edm \
 && mkdir -p /etc/edm /var/lib/edm \
 && chown 10001:10001 /var/lib/edm
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels edm-runner
USER 10001:10001
WORKDIR /var/lib/edm
VOLUME ["/var/lib/edm"]
ENTRYPOINT ["edm"]
CMD ["run", "/etc/edm/topology.yaml", "--state-dir", "/var/lib/edm"]
