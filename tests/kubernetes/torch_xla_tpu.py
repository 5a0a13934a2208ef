"""torch_xla's PJRT TPU topology setup from the environment alone, vendored for tests where torch_xla cannot be
installed (it pins torch 2.9; this project's tests run torch 2.13).

From pytorch/xla torch_xla/_internal/tpu.py at tag v2.9.0 (commit 5fab7053df86c8d503b98d9e7202ca8b8d4978c7):
build_tpu_env_from_vars, version, get_worker_ips and configure_topology, as they run with
TPU_SKIP_MDS_QUERY set (no metadata server), on a dict instead of os.environ; the env names are those of
torch_xla/core/xla_env_vars.py. Only the v4-and-later branch is kept (v2/v3 take their bounds from a table).

    python tests/kubernetes/torch_xla_tpu.py LOCAL_WORLD_SIZE   prints what each local process would be given
"""

import json
import os
import re
import socket
import sys
from math import prod
from typing import Dict, List


def _mesh(value: str) -> List[int]:
    dims = [int(d) for d in value.split(",")]
    if len(dims) != 3:
        raise ValueError(f"Mesh shape '{value}' should be length 3")
    return dims


def build_tpu_env_from_vars(env: Dict[str, str]) -> Dict[str, str]:
    return {
        "ACCELERATOR_TYPE": env.get("TPU_ACCELERATOR_TYPE"),
        "TPU_PROCESS_BOUNDS": env.get("TPU_PROCESS_BOUNDS", env.get("TPU_HOST_BOUNDS")),
        "TPU_CHIPS_PER_PROCESS_BOUNDS": env.get("TPU_CHIPS_PER_PROCESS_BOUNDS", env.get("TPU_CHIPS_PER_HOST_BOUNDS")),
        "WORKER_ID": env.get("CLOUD_TPU_TASK_ID", env.get("TPU_WORKER_ID")),
    }


def version(tpu_env: Dict[str, str]) -> int:
    match = re.match(r"^(?:v|tpu)(\d)([A-Za-z]?){7}-(\d+)$", tpu_env["ACCELERATOR_TYPE"])
    if not match:
        raise EnvironmentError("Failed to parse TPU version from metadata")
    return int(match.groups()[0])


def get_worker_ips(env: Dict[str, str]) -> List[str]:
    hostnames = env.get("TPU_WORKER_HOSTNAMES", "").split(",")
    return hostnames if len(hostnames) > 1 else ["localhost"]


def configure_topology(env: Dict[str, str], local_rank: int, local_world_size: int, base_port: int = 8476) -> None:
    if not env.get("TPU_SKIP_MDS_QUERY"):
        raise RuntimeError("TPU_SKIP_MDS_QUERY is unset: torch_xla would ask the TPU VM's metadata server")
    tpu_env = build_tpu_env_from_vars(env)
    tpu_version = version(tpu_env)
    if tpu_version < 4:
        raise NotImplementedError("v2/v3 bounds come from torch_xla's table, not vendored")
    bounds = _mesh(tpu_env["TPU_PROCESS_BOUNDS"])
    chips = _mesh(tpu_env["TPU_CHIPS_PER_PROCESS_BOUNDS"])
    env.setdefault("TPU_CHIPS_PER_PROCESS_BOUNDS", "1,1,1")
    process_bounds = ",".join(str(b * c) for b, c in zip(bounds, chips))
    env.setdefault("TPU_PROCESS_BOUNDS", process_bounds + (",2" if tpu_version == 7 else ""))
    worker_id = int(tpu_env["WORKER_ID"])
    env.setdefault("CLOUD_TPU_TASK_ID", str(worker_id * local_world_size + local_rank))
    ports = list(range(base_port, base_port + local_world_size))
    endpoints = [",".join(f"{ip}:{port}" for port in ports) for ip in get_worker_ips(env)]
    env.setdefault("TPU_PROCESS_ADDRESSES", ",".join(endpoints))
    env.setdefault("TPU_VISIBLE_CHIPS", str(local_rank))
    env.setdefault("TPU_PROCESS_PORT", str(ports[local_rank]))


def main() -> None:
    local_world_size = int(sys.argv[1])
    keys = ("TPU_PROCESS_BOUNDS", "TPU_CHIPS_PER_PROCESS_BOUNDS", "CLOUD_TPU_TASK_ID", "TPU_PROCESS_ADDRESSES",
            "TPU_VISIBLE_CHIPS", "TPU_PROCESS_PORT")  # fmt: skip
    processes = []
    for local_rank in range(local_world_size):
        env = dict(os.environ)
        configure_topology(env, local_rank, local_world_size)
        processes.append({k: env[k] for k in keys})
    bounds = _mesh(processes[0]["TPU_PROCESS_BOUNDS"])
    tpu_env = build_tpu_env_from_vars(dict(os.environ))
    report = {"worker_id": int(tpu_env["WORKER_ID"]), "hostname": socket.gethostname(), "processes": processes}
    report["processes_in_slice"] = prod(bounds)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
