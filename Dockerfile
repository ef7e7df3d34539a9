# syncd: a slim, non-root image. Build: docker build -t syncd .
# Stage 1 installs into a virtualenv (dependencies first, so a code change reuses that layer);
# stage 2 copies only the virtualenv. tests/test_ops_docker.py runs these RUN steps in a temp
# venv so they cannot rot on machines without a Docker engine.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/syncd
COPY pyproject.toml README.md requirements.txt requirements-build.txt ./
# Exact versions with hashes (`make lock`; made with Python 3.11, like PYTHON_IMAGE): the runtime
# dependencies only, before the code, so this layer changes when they do, not with the code.
RUN /opt/syncd/bin/pip install --require-hashes -r requirements.txt
# The build backend, locked too, in this stage's own Python (not in the image's virtualenv).
RUN pip install --root-user-action=ignore --require-hashes -r requirements-build.txt
COPY syncd ./syncd
COPY sql ./sql
# The package itself, built with that backend; sql/ travels inside the wheel as syncd/sql.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir dist .
RUN /opt/syncd/bin/pip install --no-deps dist/*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="syncd" \
      org.opencontainers.image.description="Mirror Stripe into PostgreSQL without webhooks"
ENV PATH=/opt/syncd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SYNCD_LOG_FORMAT=json
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin syncd
COPY --from=build /opt/syncd /opt/syncd
# No config file is baked in: configure with SYNCD_* variables or mount one and set SYNCD_CONFIG.
WORKDIR /tmp
USER 10001:10001
EXPOSE 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["syncd", "health"]
ENTRYPOINT ["syncd"]
CMD ["run"]
