# fastio-dl in a container: a slim Python, the wheel built from this tree, a non-root user.
#
#   docker build -t fastio-dl .
#   docker run --rm -e FASTIO_TOKEN -v "$PWD/mirror:/data" fastio-dl get ws:WS/root -d /data
#
# The wheel is built in a first stage so that no compiler, cache or source tree reaches the
# image that runs.
ARG PYTHON=3.12

FROM python:${PYTHON}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fastio_dl ./fastio_dl
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON}-slim
# A fixed uid: a volume's owner can be matched on the host (chown 10001 mirror/).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin fastio \
    && mkdir /data && chown fastio /data
COPY --from=build /wheels /tmp/wheels
RUN python -m pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
USER fastio
WORKDIR /data
# Plain lines (no live panel) when no terminal is attached; unbuffered so logs arrive at once.
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["fastio-dl"]
CMD ["--help"]
