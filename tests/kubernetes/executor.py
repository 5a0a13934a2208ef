"""Runs the pods of a Volcano job (a `torchx run -s kubernetes --dryrun` manifest) as processes on this machine.

Each pod's container command and args run with exactly that pod's environment, as the kubelet and Volcano's
job plugins would give it, with nothing of the test's own environment:
- the container's `env`: values, Secret references (secretKeyRef, from the test's secrets), the downward API
  (fieldRef: metadata.name, metadata.namespace, spec.nodeName, status.podIP);
- what Volcano adds (volcano-sh/volcano v1.15.1 pkg/controllers/job/plugins/env and svc/svc.go): the env
  plugin's VC_TASK_INDEX and VK_TASK_INDEX, the svc plugin's VC_<TASK>_HOSTS (the task's pods as `<pod>.<job>`)
  and VC_<TASK>_NUM; the pod's hostname is its name, its subdomain the job's;
- what every container gets: HOSTNAME, KUBERNETES_SERVICE_HOST/PORT, and the image's PATH and HOME.
The working directory is the container's workingDir, with the image's WORKDIR (/app) mapped to this checkout.
Each pod runs in a UTS namespace of its own whose hostname is the pod's name (unshare --uts, root), and
`<pod>.<job>` (with its cluster-domain form and the bare pod name) resolves to a loopback address of its own
through /etc/hosts entries that `hosts_entries` adds and removes.
"""

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
IMAGE_WORKDIR = "/app"
HOSTS = Path("/etc/hosts")
MARK = "# text-recipes pod executor"


@dataclass
class Pod:
    name: str
    hostname: str  # <pod>.<subdomain>
    address: str
    env: Dict[str, str]
    command: List[str]
    cwd: str


def volcano_env(job: dict) -> Dict[str, str]:
    """The svc plugin's per-task host lists, the same in every pod of the job."""
    name = job["metadata"]["name"]
    env = {}
    for task in job["spec"]["tasks"]:
        key = task["name"].replace("-", "_").upper()
        hosts = [f"{name}-{task['name']}-{i}.{name}" for i in range(task["replicas"])]
        env[f"VC_{key}_HOSTS"], env[f"VC_{key}_NUM"] = ",".join(hosts), str(task["replicas"])
    return env


def field(path: str, pod: str, namespace: str, address: str) -> str:
    values = {"metadata.name": pod, "metadata.namespace": namespace, "spec.nodeName": "node-0", "status.podIP": address}
    if path not in values:
        raise KeyError(f"fieldRef {path}: not filled by the test executor")
    return values[path]


def pods(job: dict, secrets: Dict[Tuple[str, str], str], namespace: str = "default", home: Path = None) -> List[Pod]:
    """The pods of a Volcano job, one per task replica, each with its env, command and working directory."""
    name = job["metadata"]["name"]
    shared = volcano_env(job)
    out = []
    for t, task in enumerate(job["spec"]["tasks"]):
        for index in range(task["replicas"]):
            pod = f"{name}-{task['name']}-{index}"
            address = f"127.0.{1 + t // 250}.{2 + t % 250}"
            (container,) = [c for c in task["template"]["spec"]["containers"]]
            env = {
                "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
                "HOME": str((home or Path("/tmp")) / pod),
                "HOSTNAME": pod,
                "KUBERNETES_SERVICE_HOST": "10.0.0.1",
                "KUBERNETES_SERVICE_PORT": "443",
                **shared,
                "VC_TASK_INDEX": str(index),
                "VK_TASK_INDEX": str(index),
            }
            for entry in container.get("env", []):
                source = entry.get("valueFrom")
                if source is None:
                    env[entry["name"]] = entry.get("value", "")
                elif "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    env[entry["name"]] = secrets[(ref["name"], ref["key"])]
                elif "fieldRef" in source:
                    env[entry["name"]] = field(source["fieldRef"]["fieldPath"], pod, namespace, address)
                else:
                    raise KeyError(f"env {entry['name']}: {sorted(source)} not filled by the test executor")
            Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
            workdir = container.get("workingDir", IMAGE_WORKDIR)
            cwd = str(ROOT / Path(workdir).relative_to(IMAGE_WORKDIR)) if workdir.startswith(IMAGE_WORKDIR) else workdir
            command = list(container.get("command", [])) + list(container.get("args", []))
            out.append(Pod(pod, f"{pod}.{name}", address, env, command, cwd))
    return out


@contextlib.contextmanager
def hosts_entries(all_pods: List[Pod], namespace: str = "default") -> Iterator[None]:
    """/etc/hosts resolving each pod's names to its address, as the cluster's DNS would; restored afterwards."""
    original = HOSTS.read_text()
    lines = [f"{p.address} {p.hostname} {p.hostname}.{namespace}.svc.cluster.local {p.name}  {MARK}" for p in all_pods]
    HOSTS.write_text(original.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    try:
        yield
    finally:
        HOSTS.write_text(original)


def start(pod: Pod, log: Path) -> subprocess.Popen:
    """The pod's container command as a process in its own UTS namespace, hostname the pod's name."""
    wrapper = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', pod.name]
    with open(log, "wb") as out:
        return subprocess.Popen(
            wrapper + pod.command,
            cwd=pod.cwd,
            env=pod.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(all_pods: List[Pod], logs: Path, timeout: float) -> Dict[str, int]:
    """Every pod at once (Volcano's gang: all or none); their exit codes once all ended, by pod name."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {p.name: start(p, logs / f"{p.name}.log") for p in all_pods}
    codes = {}
    deadline = time.monotonic() + timeout
    try:
        for name, proc in procs.items():
            codes[name] = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return codes
