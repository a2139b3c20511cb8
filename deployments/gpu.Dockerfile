# The image the nightly GPU deployments run in: CUDA PyTorch, plus git and Prefect for the
# deployment's pull steps (clone this repository, pip install -e .). Build and push it once:
#
#   docker build -f deployments/gpu.Dockerfile -t ghcr.io/your-org/cifar-lit-gpu:torch2.5.1-cuda12.4 .
#   docker push ghcr.io/your-org/cifar-lit-gpu:torch2.5.1-cuda12.4
#
# bf16-mixed precision needs an Ampere or newer GPU (A100, L4, H100, RTX 30xx/40xx).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "prefect>=3.1,<4"
