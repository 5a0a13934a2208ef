"""Every torch_xla-specific step of the recipes (TPU; XLA on CPU with PJRT_DEVICE=CPU) in one place.

torch_xla is imported inside the functions: it pins torch 2.9 and lives in its own environment
(pip install '.[tpu]'), so this module imports everywhere.

XLA traces operations lazily and compiles one program per distinct graph: a step must end in
a sync (step() does it), shapes must come from a small fixed set (pad_to_bucket), and reading a
value mid-step (.item(), `if tensor:`) runs the graph traced so far, splitting the step in two.
"""

import importlib.util
import os
from typing import Any, Tuple

import torch

from recipes.errors import RecipeError


def available() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def init_process_group() -> None:
    """torch.distributed over XLA collectives for torchrun workers; call it before device()."""
    import torch.distributed as dist
    import torch_xla.distributed.xla_backend  # noqa: F401  registers the 'xla' backend and the xla:// rendezvous

    if not dist.is_initialized():
        # xla:// also tells PJRT which chip this process owns (LOCAL_RANK of LOCAL_WORLD_SIZE); rank
        # and world size come from PJRT, one rank per XLA device
        dist.init_process_group("xla", init_method="xla://")
    workers = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.get_world_size() < workers:  # XLA:CPU: every worker is a rank 0 of 1, training alone
        raise RecipeError(
            f"torchrun started {workers} workers but XLA joined {dist.get_world_size()} "
            "(XLA on CPU takes one process per host); run on TPU chips, or with nproc_per_node=1"
        )


def device() -> torch.device:
    import torch_xla

    return torch_xla.device()


def rank_world() -> Tuple[int, int]:
    """(global rank, world size) as PJRT numbers them: one rank per XLA device."""
    import torch_xla.runtime as xr

    return xr.global_ordinal(), xr.world_size()


def step(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients over the replicas (nothing to do on one), step, and run the traced graph.

    This replaces DistributedDataParallel, which would reduce the gradients a second time.
    """
    import torch_xla
    import torch_xla.core.xla_model as xm

    xm.optimizer_step(optimizer)
    torch_xla.sync()


def pad_to_bucket(length: int, smallest: int = 16) -> int:
    """The padded width for a batch whose longest example has `length` tokens.

    Each width compiles its own forward/backward/optimizer program (8-40 s for MiniLM on CPU), so
    padding to powers of two bounds the programs by log2(max_length / smallest) + 1 at <2x padding.
    """
    return max(smallest, 1 << (max(length, 1) - 1).bit_length())


def to_cpu(obj: Any) -> Any:
    """`obj` (state dicts, optimizer state: nested dicts, lists, tuples) with its tensors on the CPU.

    Checkpoints of XLA tensors load only where torch_xla is installed, and save_pretrained
    (safetensors) fails on them: save these copies instead.
    """
    import torch_xla

    torch_xla.sync()  # pending updates run as one program, not one per tensor copied
    return _cpu(obj)


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj
