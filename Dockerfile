# One image for the user-code gRPC server, the run workers, the webserver and the daemon.
#
#   docker build -t lgsid:latest .                              # CPU torch (default)
#   docker build -t lgsid:cuda --build-arg TORCH_VARIANT=cu128 .  # CUDA torch
#
# TORCH_VARIANT is the wheel index of download.pytorch.org (cpu, cu126, cu128, ...): pick one
# that is published for TORCH_VERSION. The rest of the dependencies come from PyPI.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
# Deployment extras that are not runtime dependencies of the pipeline itself: the Kubernetes
# run launcher / executor and the S3 compute-log manager. Set to "" for a compose-only image.
ARG EXTRA_PACKAGES="dagster-k8s>=0.29,<0.30 dagster-aws>=0.29,<0.30 dagster-docker>=0.29,<0.30"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    LGSID_HOME=/opt/lgsid/home \
    DAGSTER_HOME=/opt/lgsid/home/dagster

# torch first, from the variant's index, so that the pinned torch==2.13.0 requirement of the
# project is already satisfied and pip never pulls the (large) default CUDA build from PyPI.
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

WORKDIR /opt/dagster/app

# Dependencies in their own layer: they change far less often than the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt ${EXTRA_PACKAGES} \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 lgsid \
    && mkdir -p /opt/lgsid/home/dagster /opt/lgsid/models /opt/lgsid/landing /opt/dagster/storage \
    && chown -R lgsid:lgsid /opt/lgsid /opt/dagster

USER lgsid
EXPOSE 3000 4000

# The compose file and the Helm chart set the command of each service; by default serve the
# code location over gRPC.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "orchestration.definitions", "-a", "defs"]
