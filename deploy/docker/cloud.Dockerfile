# tiersplit cloud core: dynamic batcher, ONNX Runtime / torch / Triton backends.
#   docker build -f deploy/docker/cloud.Dockerfile \
#     --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU wheel index> -t tiersplit-cloud:0.1.0 .
# torch is pinned to 2.13.0 by the `cloud` extra; pass the CPU wheel index as above or pip
# resolves the CUDA build (several GB). Cores on GPU nodes forward to Triton (overlay
# gpu-triton) or use ONNX Runtime's CUDA provider; torch stays the CPU build either way.
# Build context: the repository root. tests/deploy resolves this file's
# `RUN pip install` line with `pip install --dry-run`.
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY transport ./transport
COPY placement ./placement
COPY partitioner ./partitioner
COPY cloud_core ./cloud_core
COPY edge_agent ./edge_agent
COPY tiersplit ./tiersplit
RUN pip install --no-compile ".[cloud]" "torch==2.13.0"

RUN useradd --system --uid 10001 --no-create-home tiersplit
USER 10001
WORKDIR /var/lib/tiersplit
# 5555: ZeroMQ (CurveZMQ) from agents; 9300: /metrics and /health/*.
# The admin API (9301) listens on loopback only: reach it with kubectl port-forward.
EXPOSE 5555 9300
ENTRYPOINT ["tiersplit"]
CMD ["cloud", "serve", "--config", "/etc/tiersplit/config/cloud.yaml"]
