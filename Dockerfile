# eoforge image: Ray 2.60 (CUDA, Python 3.12) + torch/timm + eoforge, pinned by pyproject.toml.
# One image serves the Ray head and workers, the RayJob submitter and the MLflow server.
#
# Build and push (from the repository root; tag = the version you deploy):
#   docker build -t REGISTRY/eoforge:0.1.0 .
#   docker push REGISTRY/eoforge:0.1.0
# REGISTRY is e.g.
#   GKE: us-docker.pkg.dev/PROJECT/eoforge   (gcloud auth configure-docker us-docker.pkg.dev)
#   EKS: ACCOUNT.dkr.ecr.REGION.amazonaws.com (aws ecr get-login-password --region REGION |
#        docker login --username AWS --password-stdin ACCOUNT.dkr.ecr.REGION.amazonaws.com)
# then set the same name and tag in k8s/overlays/<overlay>/kustomization.yaml (`images:`).
# Local kind cluster: docker build -t eoforge:dev . && kind load docker-image eoforge:dev
# Build for x86_64 nodes from an ARM laptop: docker buildx build --platform linux/amd64 ...
#
# GPU driver: torch 2.15 from PyPI bundles its CUDA runtime (CUDA 13, NVIDIA driver >= 580 on the
# nodes). For nodes with an older driver, take torch from a CUDA 12 index instead:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 ...
#
# Layers: the dependencies are installed from pyproject.toml alone, before any source is copied,
# so a code change rebuilds only the small layers below them. No secrets are baked in: S3 and
# database credentials come from Kubernetes Secrets at run time. Runs as the base image's
# non-root user ray (uid 1000, gid 100).

ARG RAY_IMAGE=rayproject/ray:2.60.0-py312-gpu
FROM ${RAY_IMAGE}

ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    EOFORGE_HOME=/home/ray/.eoforge

USER 1000:100
WORKDIR /home/ray/eoforge

# 1) Dependencies (rebuilt only when pyproject.toml changes). psycopg2, boto3 and
#    google-cloud-storage are for the MLflow server (PostgreSQL backend, S3 / GCS artifact store).
COPY --chown=1000:100 pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^(torch|torchvision)==' /tmp/requirements.txt); \
    fi \
 && pip install -r /tmp/requirements.txt psycopg2-binary==2.9.13 boto3==1.44.5 google-cloud-storage==3.17.1 \
 && rm /tmp/requirements.txt

# 2) The package itself (no dependency resolution: they are all above).
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 platform ./platform
#    The reader's numba kernels are compiled here into their on-disk cache (next to the module), so a
#    reading process loads them instead of compiling (~3 s) on its first chip; a node whose CPU
#    differs from the build machine's compiles them once more on first use.
RUN pip install --no-deps . \
 && python -c "import eoforge, mlflow, ray, timm, torch; assert ray.__version__ == '2.60.0', ray.__version__" \
 && python -c "from eoforge.data import kernels; kernels.warm()" \
 && mkdir -p "$EOFORGE_HOME"

# 3) Job entrypoints and configs (the Ray pods mount the configs from ConfigMaps over these).
COPY --chown=1000:100 jobs ./jobs
COPY --chown=1000:100 configs ./configs

USER 1000:100
