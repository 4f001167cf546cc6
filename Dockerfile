# imagegate's container image: built on Chainguard's Python images, runs as non-root.
#
# Both stages are pinned by digest, so a build is reproducible and a rebuilt base is a reviewed
# change: `scripts/pin-base-images` resolves the current digests of the two tags (it needs the
# network) and rewrites the lines below. Pin both at once: the venv built in the first stage
# must find the same Python in the second.
# Pinned: 2024-10-13
ARG PYTHON_BUILD=cgr.dev/chainguard/python:latest-dev@sha256:370b677f44814fe8dda63e9bb407af8fbd1fc147176808f0e5576100f67dbf73
ARG PYTHON_RUN=cgr.dev/chainguard/python:latest@sha256:14b01460efdfb42b298cbb31807ed235d2661bfe576b849fce59614818302301

FROM ${PYTHON_BUILD} AS build
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/app/venv UV_PYTHON_DOWNLOADS=never
RUN python -m pip install --no-cache-dir --user uv==0.13.9
COPY --chown=nonroot:nonroot pyproject.toml uv.lock README.md ./
COPY --chown=nonroot:nonroot operator/ ./operator/
# Dependencies and the package exactly as locked; no test tools in the image.
RUN python -m uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_RUN}
WORKDIR /app
COPY --from=build /app/venv /app/venv
ENV PATH=/app/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["imagegate"]
CMD ["run"]
