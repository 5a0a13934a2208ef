"""A replica that was given GPUs or TPUs and cannot use them stops before any work, in one line.

The components set GIVEN_ENV (`gpu:N`, `tpu:N`) on every replica whose resource has GPUs or TPU chips, on
every scheduler. That is what the job asked for, the same on local_cwd, Slurm and Kubernetes; what the node
shows is not: CUDA base images set NVIDIA_VISIBLE_DEVICES=all also on CPU nodes, Slurm sets CUDA_VISIBLE_DEVICES
only with GRES, and /dev/nvidia* is missing exactly where the driver is. Without GIVEN_ENV (a laptop,
`python run.py`), `device=auto` still picks CUDA where it can and the CPU otherwise.
"""

import os
import re
from pathlib import Path
from typing import Optional, Tuple

from recipes.errors import RecipeError

GIVEN_ENV = "TEXT_RECIPES_GIVEN"
NVIDIA_VERSION = Path("/proc/driver/nvidia/version")


def given() -> Optional[Tuple[str, int]]:
    """("gpu" or "tpu", count) that this replica was given, or None."""
    value = os.environ.get(GIVEN_ENV, "")
    match = re.fullmatch(r"(gpu|tpu):([1-9][0-9]*)", value)
    if value and not match:
        raise RecipeError(f"{GIVEN_ENV}={value!r}: expected gpu:N or tpu:N (set by the components)")
    return (match.group(1), int(match.group(2))) if match else None


def driver_version() -> str:
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", NVIDIA_VERSION.read_text())
    except OSError:
        return "none loaded (no /proc/driver/nvidia/version)"
    return match.group(1) if match else "unknown"


def cuda_failure() -> str:
    """Why torch sees no CUDA device, as CUDA says it (torch.cuda.is_available() only says False)."""
    import torch

    if torch.version.cuda is None:
        return "a CPU-only build of torch"
    try:
        torch.cuda.init()
    except Exception as e:  # torch raises RuntimeError or AssertionError, with CUDA's reason
        return str(e).strip().splitlines()[0]
    return f"{torch.cuda.device_count()} device(s)"


def check_gpus(count: int, device: str, key: str) -> None:
    import torch

    if device == "cpu" or torch.cuda.is_available():
        return
    visible = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES") if k in os.environ}
    raise RecipeError(
        f"{key}={device}: this replica was given {count} GPU(s) ({GIVEN_ENV}) but torch {torch.__version__} "
        f"(CUDA build {torch.version.cuda}) sees none: {cuda_failure()}; NVIDIA driver {driver_version()}, "
        f"{', '.join(f'{k}={v}' for k, v in visible.items()) or 'no CUDA_VISIBLE_DEVICES'}; a driver too old "
        "for this CUDA build needs a newer one or the image's cu12 build (docs/schedulers/kubernetes.md)"
    )


def check_tpus(count: int, device: str, key: str, xla_installed: bool) -> None:
    if device == "cpu":
        return
    pjrt = os.environ.get("PJRT_DEVICE")
    if device != "tpu" or not xla_installed or pjrt != "TPU":
        raise RecipeError(
            f"{key}={device}: this replica was given {count} TPU chip(s) ({GIVEN_ENV}) but "
            f"{'torch_xla is not installed' if not xla_installed else 'torch_xla is installed'}, "
            f"PJRT_DEVICE={pjrt or '(unset)'}; run the image's tpu target with {key}=tpu"
        )


def resolve(device: str, key: str, xla_installed: bool) -> str:
    """The device to train or evaluate on: `device`, or for auto what this replica has; refuses a replica that was
    given accelerators it cannot use."""
    kind = given()
    if kind is not None and kind[0] == "gpu":
        check_gpus(kind[1], device, key)
    if kind is not None and kind[0] == "tpu":
        check_tpus(kind[1], "tpu" if device == "auto" and xla_installed else device, key, xla_installed)
        return "tpu" if device == "auto" else device
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
