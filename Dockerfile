# syntax=docker/dockerfile:1
#
# alert-receiver image: `receiver serve` as a non-root numeric user, built for a
# read-only root filesystem. State lives on a volume at /var/lib/receiver (the
# SQLite store) and temporary files in /tmp (mount a tmpfs or an emptyDir).
#
#   docker build -t alert-receiver:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v receiver-data:/var/lib/receiver \
#     -e RECEIVER_AUTH_TOKENS_FILE=/run/secrets/token -p 8080:8080 alert-receiver:0.1.0
#
# Dependencies come from constraints.txt (the runtime pins of the tested virtualenv;
# regenerate with `make constraints` after changing pyproject.toml).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# Dependencies first, from the pins only, so this layer is reused until they change.
COPY constraints.txt ./
RUN python -m venv /opt/receiver \
    && /opt/receiver/bin/pip install --requirement constraints.txt

# Then the project itself, as a wheel, with no dependency resolution of its own.
COPY pyproject.toml README.md ./
COPY receiver/ receiver/
RUN /opt/receiver/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/receiver/bin/pip install --no-deps --constraint constraints.txt /wheels/*.whl \
    && /opt/receiver/bin/python -m compileall -q /opt/receiver

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="alert-receiver" \
      org.opencontainers.image.description="Alertmanager and PagerDuty webhooks in, rules matched, safe playbooks out" \
      org.opencontainers.image.licenses="Apache-2.0"

# Listening on 0.0.0.0 is refused at start unless credentials are configured
# (RECEIVER_AUTH_TOKENS or RECEIVER_BASIC_AUTH, or their *_FILE variants).
ENV PATH=/opt/receiver/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    RECEIVER_HOST=0.0.0.0 \
    RECEIVER_PORT=8080 \
    RECEIVER_RULES=/etc/receiver/rules \
    RECEIVER_STORE=sqlite:////var/lib/receiver/receiver.db \
    RECEIVER_LOG_FORMAT=json

COPY --from=build /opt/receiver /opt/receiver
COPY rules/ /etc/receiver/rules/

# The only writable paths (the helm chart mounts a PVC here and an emptyDir on
# /tmp); everything else can be read-only. 10001 is the numeric user and group.
RUN mkdir -p /var/lib/receiver \
    && chown 10001:10001 /var/lib/receiver \
    && chmod 0750 /var/lib/receiver
VOLUME ["/var/lib/receiver"]

WORKDIR /var/lib/receiver
USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECEIVER_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["receiver"]
CMD ["serve"]
