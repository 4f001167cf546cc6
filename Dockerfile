# imagegate's container image: built on Chainguard's Python images, runs as non-root.
# The base images are arguments so a release can pin them by digest
# (--build-arg PYTHON_BUILD=cgr.dev/chainguard/python:latest-dev@sha256:...).
ARG PYTHON_BUILD=cgr.dev/chainguard/python:latest-dev
ARG PYTHON_RUN=cgr.dev/chainguard/python:latest

FROM ${PYTHON_BUILD} AS build
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/app/venv
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
