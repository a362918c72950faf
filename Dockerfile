# edgecore container image: build the Cython extensions in a full image, run from a slim one.
#   docker build -t edgecore .
#   docker run -p 8080:8080 -p 127.0.0.1:9901:9901 -e EDGECORE_UPSTREAM=http://api.internal:8000 \
#              -e EDGECORE_ADMIN_TOKEN=change-me edgecore
# The admin listener answers Kubernetes probes (GET /healthz, /readyz) on 0.0.0.0:9901 inside the container;
# its POST endpoints (purge, drain) are refused there until EDGECORE_ADMIN_TOKEN is set.
# The HEALTHCHECK (`edgecore health`) asks the admin address EDGECORE_ADMIN names, so moving the admin port moves
# it. A stop takes at most drain_delay + grace_period + ~2 s: 3 + 4 here, inside docker stop's default 10 s; if
# you raise them, raise `docker stop -t` / compose stop_grace_period / terminationGracePeriodSeconds to match.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ./ext
COPY edgecore ./edgecore
# the production wheel carries no test hooks: edgecore._slabcache_debug is for the test suite only
RUN EDGECORE_NO_DEBUG_MODULE=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGECORE_LISTEN=0.0.0.0:8080 \
    EDGECORE_ADMIN=0.0.0.0:9901 \
    EDGECORE_WORKERS=0 \
    EDGECORE_DRAIN_DELAY=3 \
    EDGECORE_GRACE_PERIOD=4
RUN groupadd --system --gid 10001 edgecore \
 && useradd --system --uid 10001 --gid edgecore --no-create-home --shell /usr/sbin/nologin edgecore
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["edgecore", "health", "--timeout", "2"]
ENTRYPOINT ["edgecore"]
CMD ["serve"]
