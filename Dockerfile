# The image `torchx run -s kubernetes` runs: this project at /app (run.py, conf/ and data/ beside the code, where
# the components' commands find them) on top of its dependencies. Two targets, both linux/amd64 (GKE's GPU and TPU
# nodes are x86_64; built on an ARM machine without --platform the image would not start there):
#   default  torch 2.13 built for CUDA 12.8 (runs on NVIDIA drivers R525 and newer, GKE's default driver included;
#            also on CPU nodes), the gcs, ray and onnx extras
#   tpu      torch and torch_xla 2.9 (a torch_xla release needs the torch of the same release), the gcs extra
# Every other package at the exact version of constraints/<target>.txt, so that two builds get the same packages.
#
#   docker build --platform linux/amd64 -t REGISTRY/text-recipes:latest .
#   docker build --platform linux/amd64 --target tpu -t REGISTRY/text-recipes:tpu .
#   docker build --platform linux/amd64 --build-arg TORCH_CUDA=cu130 ...   CUDA 13: needs driver R580+ on the nodes
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    # GKE mounts the node's NVIDIA driver libraries here
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64 \
    PATH=/usr/local/nvidia/bin:${PATH}
RUN useradd --create-home --uid 1000 app && install -d -o app -g app /app
WORKDIR /app
# pyproject.toml's dependencies, one file per group, and the constraints, so that the layers installing them are
# rebuilt only when those change, not with every change of the code
COPY pyproject.toml ./
COPY constraints/ constraints/
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
groups = {'project': p['dependencies'], **p['optional-dependencies']}; \
[open(f'/tmp/requirements-{name}.txt', 'w').write('\n'.join(deps)) for name, deps in groups.items()]"

FROM base AS tpu
ARG TORCH_XLA_VERSION=2.9.0
# torch's CPU build: TPU hosts have no GPU, and the CUDA libraries would add gigabytes
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_XLA_VERSION}" \
    && pip install --no-cache-dir -c constraints/tpu.txt "torch==${TORCH_XLA_VERSION}" \
        "torch_xla[tpu]==${TORCH_XLA_VERSION}" -r /tmp/requirements-project.txt -r /tmp/requirements-gcs.txt
COPY --chown=app:app . .
RUN pip install --no-cache-dir --no-deps -e .
# root: the TPU device files (/dev/vfio/*) keep the node's owner, root, inside the pod (not so NVIDIA's, mode 0666)
ENV PJRT_DEVICE=TPU

FROM base AS default
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
# torch from PyTorch's index of that CUDA build (PyPI's is CUDA 13); its wheel pins its CUDA libraries exactly
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir -c constraints/default.txt "torch==${TORCH_VERSION}" \
        -r /tmp/requirements-project.txt -r /tmp/requirements-gcs.txt -r /tmp/requirements-ray.txt \
        -r /tmp/requirements-onnx.txt
COPY --chown=app:app . .
RUN pip install --no-cache-dir --no-deps -e .
# a numeric user, so that Kubernetes can check runAsNonRoot
USER 1000
