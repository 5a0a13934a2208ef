"""TorchX's Kubernetes scheduler (Volcano jobs) for GKE as it is; `torchx run -s kubernetes` gets this one.

It submits the Volcano job that torchx 0.7.0 builds, with what a real cluster needs on top:
- pod overlays: a role's `metadata["kubernetes"]` is merged into each of its pods, as newer TorchX does
  (torchx.specs.overlays): a dict, its "V1Pod" entry if it has one, or the URI of a YAML or JSON file; dicts
  merge, lists append, tuples (`!!python/tuple` in YAML) replace, other values overwrite (TorchX's PUT/JOIN/DEL
  operators are not supported). This part can go once the TorchX this project requires has overlays;
- named resources: node labels in `resource.capabilities` (GKE's accelerator, TPU type and topology) become
  nodeSelectors, where torchx 0.7.0 takes only the instance type, and pods asking for GPUs or TPUs tolerate
  the taints GKE puts on those nodes;
- TPU slices: one pod per host, each told the slice's shape, its worker id and every host's name, which
  libtpu and torch_xla read from the environment (GKE injects the last two only into Indexed Jobs);
- one slice per job: the pods of a multi-host TPU job must share a node pool (GKE makes each multi-host slice a
  node pool of its own) that no other slice job holds, so a job never spans two slices of the same type;
- gang scheduling: Volcano starts the job's pods all together or not at all (minAvailable);
- Workload Identity and secrets: `-cfg service_account=KSA`, `-cfg secret_env=ENV:SECRET/KEY;...` (the job
  names secrets, never holds their values);
- the container runs in the image's WORKDIR (`-cfg workdir`), where run.py, conf/ and data/ are;
- names: the job, its pods and their hostnames stay DNS labels of at most 63 characters;
- no workspace: the image comes from the Dockerfile, so `torchx run` needs no `--workspace ""`;
- refused in one line before anything is submitted: a job that writes to a path inside its pod (lost with the
  pod), a TPU slice run on other than one replica per host, a multi-replica batch_infer without its Ray secret.
"""

import copy
import posixpath
import re
from dataclasses import replace
from typing import Any, Dict, Iterable, List, Optional

import fsspec
import yaml
from torchx.schedulers import kubernetes_scheduler as base
from torchx.schedulers.api import AppDryRunInfo, DescribeAppResponse, ListAppResponse, Scheduler
from torchx.specs import AppDef, InvalidRunConfigException, Role, macros, runopts
from torchx.specs.finder import ComponentValidationException
from torchx.util.strings import normalize_str

from launcher.submit.appdef import NEEDS
from launcher.submit.named_resources import TPU, tpu_slice

WORKDIR = "/app"  # the Dockerfile's WORKDIR
MAX_NAME = 63  # a DNS label: pod names, hostnames, the job's Service
RANDOM_ID = 14  # the longest suffix torchx's make_unique adds: a 64-bit number in letters and digits
GPU = "nvidia.com/gpu"
TOLERATED = (GPU, TPU)  # GKE taints the nodes that have these with the resource's name
LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
NODE_POOL = "cloud.google.com/gke-nodepool"
JOB_LABEL = "app.kubernetes.io/instance"  # torchx's label of the job name on every pod
SLICE_LABEL = "text-recipes/tpu-slice-job"  # on the pods of multi-host TPU jobs: the job name
OVERLAY_FORMAT_KEY = "__torchx_overlays__"  # torchx.specs.overlays.set_overlay's mark of {kind: overlay}


def _fail(message: str) -> None:
    raise ComponentValidationException(message)  # torchx prints it as one line


class _OverlayLoader(yaml.SafeLoader):
    pass


_OverlayLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def role_overlay(role: Role) -> Dict[str, Any]:
    """The pod overlay of a role, as newer TorchX's get_overlay(role, "kubernetes", "V1Pod") reads it."""
    value = role.metadata.get("kubernetes")
    if isinstance(value, str):
        with fsspec.open(value if "://" in value else f"file://{value}", "r") as f:
            value = yaml.load(f, Loader=_OverlayLoader)  # YAML, or JSON (which YAML reads)
    if not isinstance(value, dict):
        return {}
    return value.get("V1Pod", {}) if "V1Pod" in value or value.get(OVERLAY_FORMAT_KEY) else value


def apply_overlay(pod: Dict[str, Any], overlay: Dict[str, Any]) -> None:
    for key, value in overlay.items():
        if key.startswith(("__put__:", "__join__:", "__del__:")):
            _fail(f"pod overlay key {key!r}: TorchX's PUT/JOIN/DEL need a newer TorchX; a tuple replaces a list")
        if isinstance(value, dict) and isinstance(pod.get(key), dict):
            apply_overlay(pod[key], value)
        elif isinstance(value, list) and isinstance(pod.get(key), list):
            pod[key].extend(copy.deepcopy(value))
        else:
            pod[key] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)


def resource_overlay(role: Role) -> Dict[str, Any]:
    """Where a role's resource runs on GKE: nodes with its labels (capabilities named like node labels), whose
    GPU or TPU taints the pod tolerates."""
    resource = role.resource
    labels = {key: str(value) for key, value in resource.capabilities.items() if "/" in key}
    asked = set(resource.devices) | ({GPU} if resource.gpu > 0 else set())
    tolerations = [{"key": key, "operator": "Exists", "effect": "NoSchedule"} for key in TOLERATED if key in asked]
    return {"spec": {"nodeSelector": labels, "tolerations": tolerations}}


def with_tpu_env(role: Role) -> Role:
    """A role on a TPU slice, one replica per host, with the environment libtpu and torch_xla read there."""
    tpu = tpu_slice(role.resource)
    if tpu is None:
        return role
    if role.num_replicas != tpu.hosts:
        _fail(
            f"role {role.name}: a {tpu.accelerator_type} slice has {tpu.hosts} host(s), one replica each; "
            f"run {tpu.hosts} replicas (--nnodes {tpu.hosts}), not {role.num_replicas}"
        )
    # Volcano's svc plugin names each pod <job>-<task>-0 and makes it a host of the subdomain <job>
    hosts = [f"{macros.app_id}-{normalize_str(f'{role.name}-{i}')}-0.{macros.app_id}" for i in range(tpu.hosts)]
    env = {
        "PJRT_DEVICE": "TPU",
        "TPU_SKIP_MDS_QUERY": "1",  # the slice is described here, not by the metadata server of a TPU VM
        "TPU_ACCELERATOR_TYPE": tpu.accelerator_type,
        "TPU_HOST_BOUNDS": ",".join(map(str, tpu.host_bounds)),
        "TPU_CHIPS_PER_HOST_BOUNDS": ",".join(map(str, tpu.chips_per_host_bounds)),
        "TPU_WORKER_ID": macros.replica_id,
        "TPU_WORKER_HOSTNAMES": ",".join(hosts),
    }
    return replace(role, env={**env, **role.env})


def slice_overlay(role: Role, job: str) -> Dict[str, Any]:
    """The pods of a multi-host TPU job on the hosts of one slice: the node pool of the job's other pods (the first
    pod matches its own term, which Kubernetes accepts), none that another slice job's pods are on."""
    tpu = tpu_slice(role.resource)
    if tpu is None or tpu.hosts == 1:
        return {}
    others = {
        "matchExpressions": [
            {"key": SLICE_LABEL, "operator": "Exists"},
            {"key": JOB_LABEL, "operator": "NotIn", "values": [job]},
        ]
    }
    return {
        "metadata": {"labels": {SLICE_LABEL: job}},
        "spec": {
            "affinity": {
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {SLICE_LABEL: job}}, "topologyKey": NODE_POOL}
                    ]
                },
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": others, "topologyKey": NODE_POOL}
                    ]
                },
            }
        },
    }


def job_name(app: AppDef) -> str:
    """The app's name, cut so that its pods' names (<job>-<random id>-<role>-<replica>-0) are DNS labels."""
    for role in app.roles:
        if not re.fullmatch(LABEL, role.name):
            _fail(f"role name {role.name!r}: use lowercase letters, digits and '-' (Kubernetes names)")
    longest = max(len(f"{role.name}-{role.num_replicas - 1}") for role in app.roles)
    room = MAX_NAME - len("-") - RANDOM_ID - len("-") - longest - len("-0")
    name = normalize_str(app.name)[:room].rstrip("-")
    if not re.match(r"[a-z]", name):
        _fail(f"app name {app.name!r}: Kubernetes needs a name that starts with a letter ({room} characters are kept)")
    return name


def secret_refs(cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """-cfg secret_env=ENV:SECRET/KEY;... as container env entries that Kubernetes fills from the secrets."""
    refs = []
    for entry in cfg.get("secret_env") or []:
        match = re.fullmatch(rf"([A-Za-z_][A-Za-z0-9_]*):({LABEL}(?:\.{LABEL})*)/([-._A-Za-z0-9]+)", entry)
        if not match:
            raise InvalidRunConfigException(f"secret_env {entry!r}: expected ENV:SECRET/KEY", "secret_env", cfg)
        env, secret, key = match.groups()
        refs.append({"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return refs


def check_needs(role: Role, pod: Dict[str, Any], workdir: str) -> None:
    """What a role's metadata says it writes and reads (launcher/submit/appdef.py NEEDS), against its pod."""
    needs = role.metadata.get(NEEDS, {})
    container = pod["spec"]["containers"][0]  # the role's; an overlay may add others
    for env in needs.get("secret_env", []):
        if not any(e["name"] == env and "secretKeyRef" in e.get("valueFrom", {}) for e in container.get("env", [])):
            _fail(
                f"{env}: this job reads it from a Kubernetes Secret; add -cfg secret_env={env}:SECRET/KEY "
                f"(kubectl create secret generic SECRET --from-literal=KEY=...)"
            )
    mounts = [m["mountPath"].rstrip("/") for m in container.get("volumeMounts", []) if m["mountPath"] != "/dev/shm"]
    for arg, location in needs.get("outputs", {}).items():
        if "://" in location and not location.startswith("file://"):
            continue
        path = posixpath.normpath(posixpath.join(workdir, location.removeprefix("file://")))
        if not any(path == m or path.startswith(f"{m}/") for m in mounts):
            _fail(
                f"{arg} {location}: a path inside the pod, whose files are lost when it ends; "
                "on Kubernetes write to a bucket (gs://BUCKET/...) or a mounted volume"
            )


class KubernetesScheduler(Scheduler[Dict[str, Any]]):
    """torchx 0.7.0's KubernetesScheduler, less its Docker workspace, plus the above (see the module's doc)."""

    def __init__(self, session_name: str, client: Optional[Any] = None) -> None:
        super().__init__("kubernetes", session_name)
        self._volcano = base.KubernetesScheduler(session_name, client=client)  # torchx's, for the API calls

    def _run_opts(self) -> runopts:
        opts = self._volcano._run_opts()
        opts.add("workdir", type_=str, default=WORKDIR, help="the container's working directory: the image's WORKDIR")
        opts.add(
            "secret_env",
            type_=List[str],
            default=None,
            help="environment variables from Kubernetes Secrets, ENV:SECRET/KEY;... (names, never values)",
        )
        return opts

    def _submit_dryrun(self, app: AppDef, cfg: Dict[str, Any]) -> AppDryRunInfo[base.KubernetesJob]:
        refs = secret_refs(cfg)
        job = replace(app, name=job_name(app), roles=[with_tpu_env(role) for role in app.roles])
        resource = base.app_to_resource(job, cfg["queue"], cfg.get("service_account"), cfg.get("priority_class"))
        tasks = resource["spec"]["tasks"]
        task_roles = [r for r in app.roles for _ in range(r.num_replicas)]  # one per task, in the order of the tasks
        for task, role in zip(tasks, task_roles):
            pod = base.sanitize_for_serialization(task["template"])
            container = pod["spec"]["containers"][0]
            container["workingDir"] = cfg["workdir"]
            container["env"] = container.get("env", []) + refs
            apply_overlay(pod, resource_overlay(role))
            apply_overlay(pod, slice_overlay(role, resource["metadata"]["name"]))
            apply_overlay(pod, role_overlay(role))
            check_needs(role, pod, cfg["workdir"])
            task["template"] = pod
        resource["spec"]["minAvailable"] = sum(task.get("minAvailable", task["replicas"]) for task in tasks)
        return AppDryRunInfo(base.KubernetesJob(images_to_push={}, resource=resource), repr)

    def _validate(self, app: AppDef, scheduler: str) -> None:
        pass  # as torchx's: a role may leave its resources to the cluster's defaults

    def schedule(self, dryrun_info: AppDryRunInfo[base.KubernetesJob]) -> str:
        return self._volcano.schedule(dryrun_info)

    def describe(self, app_id: str) -> Optional[DescribeAppResponse]:
        return self._volcano.describe(app_id)

    def list(self) -> List[ListAppResponse]:
        return self._volcano.list()

    def log_iter(self, *args: Any, **kwargs: Any) -> Iterable[str]:
        return self._volcano.log_iter(*args, **kwargs)

    def _cancel_existing(self, app_id: str) -> None:
        self._volcano._cancel_existing(app_id)


def create_scheduler(session_name: str, client: Optional[Any] = None, **kwargs: Any) -> KubernetesScheduler:
    return KubernetesScheduler(session_name, client=client)
