"""Named resources (`-h <name>`) for the machines these jobs run on, registered on `torchx.named_resources`.

Slurm GPU nodes: `slurm_<gpu>_<n>` asks for n GPUs of an 8-GPU node (HGX/DGX class), with 12 CPUs
and 120 GiB of host memory per GPU: below what such nodes give a job, so the request fits after
the OS and Slurm take their share (a request above a node's RealMemory would pend forever).
"""
from typing import Callable, Dict

from torchx.specs import Resource

GiB = 1024

SLURM_GPUS = {"a100_40gb": "A100 40GB", "a100_80gb": "A100 80GB", "h100_80gb": "H100 80GB"}


def _slurm_gpu_node(gpus: int) -> Callable[[], Resource]:
    return lambda: Resource(cpu=12 * gpus, gpu=gpus, memMB=120 * GiB * gpus)


NAMED_RESOURCES: Dict[str, Callable[[], Resource]] = {
    f"slurm_{gpu}_{n}": _slurm_gpu_node(n) for gpu in SLURM_GPUS for n in (1, 2, 4, 8)
}

globals().update(NAMED_RESOURCES)  # each entry point names a module attribute
