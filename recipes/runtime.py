"""Process-group bootstrap: the same recipe runs as 1 process or N torchrun workers."""

import functools
import os
import time
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from recipes import devices
from recipes.errors import RecipeError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def xla(self) -> bool:
        return self.device.type == "xla"

    def batch_width(self, longest: int) -> int:
        """How wide to pad a batch: to its longest example, except on XLA, where every new shape compiles a new
        program."""
        if not self.xla:
            return longest
        from recipes import xla

        return xla.pad_to_bucket(longest)

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_runtime(device: str = "auto", key: str = "device") -> Runtime:
    """Reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE); gloo on CPU, nccl on CUDA. A replica given GPUs
    or TPUs that it cannot use stops here (recipes/devices.py)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from recipes import xla

    device = devices.resolve(device, key, xla.available())
    if device == "tpu":  # any XLA device: TPU, or CPU with PJRT_DEVICE=CPU
        if not xla.available():
            raise RecipeError(
                f"{key}=tpu: torch_xla is not installed "
                "(it needs torch 2.9: pip install '.[tpu]' in its own environment)"
            )
        if world_size > 1:
            xla.init_process_group()
        rank, world_size = xla.rank_world()
        return Runtime(xla.device(), rank, local_rank, world_size)
    if device == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"{key}=cuda: no CUDA device is visible to this process (torch.cuda.is_available() is False); "
            "use device=auto or cpu"
        )
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, local_rank, world_size)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 where the hardware multiplies in bf16 faster than in fp32 (CUDA with bf16, XLA, CPUs where it measures
    so), else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise RecipeError(f"precision={precision!r}: expected auto, bf16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "xla":  # TPUs multiply in bf16
        return torch.bfloat16
    if device.type != "cpu":
        return torch.float32
    faster = [cpu_bf16_is_faster()]
    if dist.is_initialized():  # every rank takes rank 0's measurement
        dist.broadcast_object_list(faster, src=0)
    return torch.bfloat16 if faster[0] else torch.float32


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_faster() -> bool:
    # AVX512-BF16 alone does not settle it: bf16 trained MiniLM 2.3x faster than fp32 on an AMD EPYC,
    # yet multiplied at half the fp32 rate on a Xeon without AMX (README, Benchmarks). So measure (~50 ms).
    if not any(getattr(torch.cpu, f"_is_{isa}_supported", lambda: False)() for isa in ("avx512_bf16", "amx_tile")):
        return False
    x, w = torch.randn(512, 384), torch.randn(1536, 384)  # a MiniLM FFN matmul

    def seconds(dtype: torch.dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        torch.nn.functional.linear(a, b)  # kernel selection and weight packing
        times = []
        for _ in range(5):
            t = time.perf_counter()
            torch.nn.functional.linear(a, b)
            times.append(time.perf_counter() - t)
        return min(times)

    return seconds(torch.bfloat16) < 0.8 * seconds(torch.float32)
