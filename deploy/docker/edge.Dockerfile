# tiersplit edge agent: int8 ONNX heads on ONNX Runtime, no torch.
#   docker build -f deploy/docker/edge.Dockerfile -t tiersplit-edge:0.1.0 .
# Build context: the repository root. tests/deploy runs this file's COPY and
# `RUN pip install` lines in a fresh venv and imports edge_agent, so they cannot rot.
FROM python:3.11-slim

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
RUN pip install --no-compile ".[edge]"

RUN useradd --system --uid 10001 --no-create-home tiersplit
USER 10001
WORKDIR /var/lib/tiersplit
# KServe v2 API for local applications.
EXPOSE 8000
ENTRYPOINT ["tiersplit"]
CMD ["edge", "run", "--config", "/etc/tiersplit/edge.yaml"]
