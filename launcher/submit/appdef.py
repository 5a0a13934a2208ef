"""The AppDef every text-recipes component builds, and the checks its arguments get at build time.

Arguments are checked when the AppDef is built, so a typo fails at `torchx run --dryrun` or
submit time, not after the job has waited for cluster nodes.
"""

import argparse
import re
import shlex
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig
from torchx import specs
from torchx.components.dist import _noquote
from torchx.specs import builders
from torchx.specs.file_linter import TorchXArgumentHelpFormatter
from torchx.specs.finder import ComponentValidationException

from launcher.compose import compose
from launcher.job.ports import DERIVED
from launcher.submit.named_resources import TPU, gke_per_gpu
from recipes.devices import GIVEN_ENV
from recipes.errors import RecipeError

# Env keys that name secrets: *TOKEN*, *SECRET*, *PASS*, *AUTH*, *CREDENTIAL*, *PRIVATE*, *APIKEY*, *KEY, *PAT.
# A secret put in `env` is written into the AppDef, the scheduler's request, dryruns and sbatch scripts.
_SECRET_KEY = re.compile(r"TOKEN|SECRET|PASS|AUTH|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|COOKIE|KEY$|PAT$")
# Values that are secrets whatever their key: Hugging Face, GitHub, OpenAI, AWS, Google keys, bearer tokens,
# passwords inside URLs.
_SECRET_VALUE = re.compile(
    r"^(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{30,}|Bearer\s+\S{8,})|://[^/\s:@]+:[^/\s@]+@"
)
_NOT_SECRET = {"TOKENIZERS_PARALLELISM", "RAY_AUTH_MODE"}  # settings, holding no secret
HOW_TO_PASS_SECRETS = (
    "export it in the launching shell instead (local_cwd and slurm pass the environment through; "
    "on Kubernetes use a Secret)"
)
# Kubernetes object and label names, Slurm job names: the job's pods add "-<role>-<n>-0" to it.
_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,34}[a-z0-9])?$")
# Role.metadata key: what a job writes and which variables it reads from a secret, for schedulers that can check
# that before the job waits for nodes (launcher/submit/kubernetes.py):
# {"outputs": {argument: location}, "secret_env": [...]}
NEEDS = "text_recipes"
# --cpu and --memMB per GPU where not given: what every GKE GPU machine type leaves a pod per GPU (the least is
# g2-standard-4's, 4 vCPUs and 16 GiB with one L4: 2 CPUs, 11646 MB); else 2 CPUs and 8 GiB
PER_GPU = gke_per_gpu()
DEFAULT_SIZE = (2, 8192)


class _HelpFormatter(TorchXArgumentHelpFormatter):
    """TorchX's --help, but the trailing Hydra overrides read as what they are: optional, named `overrides`.

    argparse marks every REMAINDER positional required, and TorchX prints that as "(required)".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == argparse.REMAINDER:
            return (action.help or "") + " (optional)"
        return super()._get_help_string(action)

    def _get_default_metavar_for_positional(self, action: argparse.Action) -> str:
        return action.dest


builders.TorchXArgumentHelpFormatter = _HelpFormatter  # read when a component's parser is built


def _fail(message: str) -> None:
    # torchx prints this exception as a one-line error instead of a traceback
    raise ComponentValidationException(message)


def check_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    env = dict(env or {})
    for key, value in env.items():
        if (
            key.upper() not in _NOT_SECRET
            and _SECRET_KEY.search(key.upper())
            or _SECRET_VALUE.search(str(value).strip())
        ):
            _fail(f"--env {key}: looks like a secret and would be stored in the job definition; {HOW_TO_PASS_SECRETS}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def default_size(cpu: Optional[int], gpu: int, memMB: Optional[int]) -> Tuple[int, int]:
    """--cpu and --memMB, or what DEFAULT_SIZE and PER_GPU make of --gpu where they are not given."""
    return (
        max(DEFAULT_SIZE[0], PER_GPU[0] * gpu) if cpu is None else _integer("cpu", cpu),
        max(DEFAULT_SIZE[1], PER_GPU[1] * gpu) if memMB is None else _integer("memMB", memMB),
    )


def _integer(arg: str, value) -> int:
    try:
        return int(value)  # torchx 0.7.0's CLI passes an Optional[int] argument as the string typed
    except ValueError:
        _fail(f"--{arg}={value!r}: expected an integer")


def check_job(
    name: str,
    nnodes: int,
    nproc_per_node: int,
    cpu: int,
    gpu: int,
    memMB: int,
    ports: Dict[str, int],
    h: Optional[str] = None,
    max_retries: int = 0,
) -> None:
    if not _NAME.match(name):
        _fail(
            f"--name {name!r}: use 1-36 lowercase letters, digits and '-', starting with a letter "
            "(Kubernetes and Slurm job names)"
        )
    if h is not None:
        try:
            specs.named_resources[h]
        except KeyError:
            _fail(f"-h {h}: not a registered named resource (see the torchx.named_resources entry points)")
    for arg, value, least in (
        ("nnodes", nnodes, 1),
        ("nproc_per_node", nproc_per_node, 1),
        ("cpu", cpu, 1),
        ("gpu", gpu, 0),
        ("memMB", memMB, 1),
        ("max_retries", max_retries, 0),
    ):
        if value < least:
            _fail(f"--{arg}={value}: must be at least {least}")
    for arg, port in ports.items():
        if port != DERIVED and not 1024 <= port <= 65535:
            _fail(f"--{arg}={port}: expected a port from 1024 to 65535, or {DERIVED} to derive one from the job id")


def replica_resource(cpu: int, gpu: int, memMB: int, h: Optional[str]) -> specs.Resource:
    """What each replica asks for: the named resource `h` if given, else cpu/gpu/memMB."""
    if h is not None and h not in specs.named_resources:
        _fail(f"-h {h}: not a registered named resource (see the torchx.named_resources entry points)")
    return specs.resource(cpu=cpu, gpu=gpu, memMB=memMB, h=h)


def processes_per_node(nproc_per_node: Optional[int], resource: specs.Resource, h: Optional[str]) -> int:
    """--nproc_per_node, by default one process per GPU of a replica (1 without GPUs); never more than its GPUs,
    as each process takes a GPU of its own (torch.cuda.set_device(LOCAL_RANK))."""
    if nproc_per_node is None:
        return max(resource.gpu, 1)
    nproc = _integer("nproc_per_node", nproc_per_node)
    if 0 < resource.gpu < nproc:
        gpus = f"-h {h}'s {resource.gpu} GPUs" if h else f"--gpu={resource.gpu}"
        _fail(
            f"--nproc_per_node={nproc}: more processes than GPUs per replica ({gpus}), and each process takes "
            f"one GPU; use --nproc_per_node {resource.gpu} or fewer, or leave it out for one per GPU"
        )
    return nproc


def port_map(name: str, port: int) -> Dict[str, int]:
    """A role's port_map: the ports it listens on that are known when the AppDef is built (Kubernetes makes them
    containerPorts, which must be 1-65535). A derived port (0) is known only in the job, and declaring it is not
    needed: Volcano's Service is headless and its NetworkPolicy admits every port between the job's pods."""
    return {} if port == DERIVED else {name: port}


def given_env(resource: specs.Resource) -> Dict[str, str]:
    """What a replica was given, for the recipe to refuse accelerators it cannot use (recipes/devices.py)."""
    if resource.gpu > 0:
        return {GIVEN_ENV: f"gpu:{resource.gpu}"}
    if resource.devices.get(TPU, 0) > 0:
        return {GIVEN_ENV: f"tpu:{resource.devices[TPU]}"}
    return {}


def check_overrides(command: str, overrides: List[str]) -> DictConfig:
    """The Hydra overrides, composed and checked as `run.py` will, except what only the job's machine can tell."""
    try:
        return compose(command, overrides)
    except RecipeError as e:
        _fail(str(e))


def command_line(args: List[str]) -> str:
    return " ".join(a if isinstance(a, _noquote) else shlex.quote(a) for a in args)


def recipe_app(
    command: str,
    overrides: List[str],
    name: str,
    image: str,
    nnodes: int,
    nproc_per_node: Optional[int],
    cpu: Optional[int],
    gpu: int,
    memMB: Optional[int],
    h: Optional[str],
    env: Optional[Dict[str, str]],
    max_retries: int,
    rdzv_port: int,
) -> specs.AppDef:
    cpu, memMB = default_size(cpu, gpu, memMB)
    resource = replica_resource(cpu, gpu, memMB, h)
    nproc_per_node = processes_per_node(nproc_per_node, resource, h)
    check_job(name, nnodes, nproc_per_node, cpu, gpu, memMB, {"rdzv_port": rdzv_port}, h, max_retries)
    env = {**check_env(env), **given_env(resource)}
    cfg = check_overrides(command, overrides)
    # evaluate writes next to its checkpoint unless given an output_dir
    arg, output = ("--output_dir", cfg.output_dir) if cfg.output_dir else ("--checkpoint", cfg.checkpoint)
    # one node: a free port on localhost; several: c10d store on the rank-0 host, as in torchx's dist.ddp, on
    # --rdzv_port, or where that is 0 (DERIVED) on the port launcher/job/elastic.py derives from --rdzv_id
    endpoint = "localhost:0" if nnodes == 1 else _noquote(f"$${{{specs.macros.rank0_env}:=localhost}}:{rdzv_port}")
    cmd = [
        "python3",
        "-m",
        "launcher.job.elastic",  # torchrun, reporting a failed worker in one line
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        specs.macros.app_id,
        "--nnodes",
        str(nnodes),
        "--nproc_per_node",
        str(nproc_per_node),
        "--tee",
        "3",
        "run.py",
        command,
        *overrides,
    ]
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name=command,
                image=image,
                entrypoint="bash",
                args=["-c", command_line(cmd)],
                num_replicas=nnodes,
                resource=resource,
                env=env,
                port_map=port_map("c10d", rdzv_port if nnodes > 1 else DERIVED),
                max_retries=max_retries,
                metadata={NEEDS: {"outputs": {arg: str(output)}}},
            )
        ],
    )
