"""The AppDef every text-recipes component builds: torchrun over `run.py <command> overrides`."""
import re
import shlex
from typing import Dict, List, Optional

from torchx import specs
from torchx.components.dist import _noquote

# A secret put in `env` would be written into the AppDef, the scheduler's request and dryrun output.
_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY", re.I)


def recipe_app(
    command: str,
    overrides: List[str],
    name: str,
    image: str,
    nnodes: int,
    nproc_per_node: int,
    cpu: int,
    gpu: int,
    memMB: int,
    h: Optional[str],
    env: Optional[Dict[str, str]],
    max_retries: int,
    rdzv_port: int,
) -> specs.AppDef:
    env = dict(env or {})
    for key in env:
        if _SECRET.search(key):
            raise ValueError(
                f"env {key}: looks like a secret and would be stored in the job definition; export it in the "
                "launching shell instead (local_cwd and slurm pass the environment through)"
            )
    env.setdefault("PYTHONUNBUFFERED", "1")
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes={nnodes}, nproc_per_node={nproc_per_node}: both must be at least 1")
    # one node: a free port on localhost; several: c10d store on the rank-0 host, as in torchx's dist.ddp
    endpoint = "localhost:0" if nnodes == 1 else _noquote(f"$${{{specs.macros.rank0_env}:=localhost}}:{rdzv_port}")
    cmd = [
        "torchrun",
        "--rdzv_backend", "c10d",
        "--rdzv_endpoint", endpoint,
        "--rdzv_id", specs.macros.app_id,
        "--nnodes", str(nnodes),
        "--nproc_per_node", str(nproc_per_node),
        "--tee", "3",
        "run.py", command, *overrides,
    ]
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name=command,
                image=image,
                entrypoint="bash",
                args=["-c", " ".join(a if isinstance(a, _noquote) else shlex.quote(a) for a in cmd)],
                num_replicas=nnodes,
                resource=specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h),
                env=env,
                port_map={"c10d": rdzv_port},
                max_retries=max_retries,
            )
        ],
    )
