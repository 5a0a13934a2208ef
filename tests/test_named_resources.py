"""The named resources: Slurm's (`-h slurm_<gpu>_<n>`) fit the common 8-GPU nodes and name their GPU type; GKE's
(`-h gke_*`) fit what GKE leaves allocatable on their machine type, with room for the node's DaemonSets."""

import pytest
import yaml
from torchx.runner import get_runner
from torchx.specs import named_resources

from components.train import train
from launcher.submit import named_resources as gke
from launcher.submit.named_resources import NAMED_RESOURCES, SLURM_GPU_TYPE
from tests.conftest import ROOT

GiB = 1024  # MiB, as memMB and Slurm's --mem count

# common 8-GPU nodes of these GPUs: (CPUs as Slurm counts them, host memory in GiB)
NODES = {
    "HGX, 2 x 32 cores": (64, 1024),
    "Compute Engine a2-highgpu-8g": (96, 680),
    "AWS p4d.24xlarge": (96, 1152),
    "Azure ND96asr_v4": (96, 900),
    "DGX A100": (128, 1024),
    "DGX H100": (112, 2048),
}
OS_SHARE = 32 * GiB  # what the OS, slurmd and filesystem clients keep of a node's memory at least

# what `nvidia-smi --query-gpu=name` says of each GPU: Slurm's NVML AutoDetect makes the GRES type of it
PRODUCT_NAMES = {
    "a100_40gb": "NVIDIA A100-SXM4-40GB",
    "a100_80gb": "NVIDIA A100-SXM4-80GB",
    "h100_80gb": "NVIDIA H100 80GB HBM3",
}
SLURM = sorted(name for name in NAMED_RESOURCES if name.startswith("slurm_"))


def test_every_gpu_and_count_is_registered():
    assert SLURM == sorted(f"slurm_{gpu}_{n}" for gpu in PRODUCT_NAMES for n in (1, 2, 4, 8))


@pytest.mark.parametrize("name", SLURM)
@pytest.mark.parametrize("node", NODES)
def test_slurm_resources_fit_the_common_nodes(name, node):
    """8/n replicas of slurm_<gpu>_<n> fit on one node (all 8 GPUs), after the OS's share."""
    resource = named_resources[name]  # registered on the torchx.named_resources entry point
    cpus, gib = NODES[node]
    per_node = 8 // resource.gpu
    assert resource.gpu * per_node == 8
    assert resource.cpu * per_node <= cpus, f"{name}: {resource.cpu} CPUs x {per_node} > {node}'s {cpus}"
    assert resource.memMB * per_node <= gib * GiB - OS_SHARE, f"{name}: {resource.memMB} MiB x {per_node} > {node}"


@pytest.mark.parametrize("name", SLURM)
def test_slurm_resources_ask_8_cpus_and_80_gib_per_gpu(name):
    resource = named_resources[name]
    assert (resource.cpu, resource.memMB) == (8 * resource.gpu, 80 * GiB * resource.gpu)


@pytest.mark.parametrize("name", SLURM)
def test_slurm_resources_name_the_gres_type_that_nvml_autodetect_gives(name):
    gpu, gpus = name.removeprefix("slurm_").rsplit("_", 1)
    resource = named_resources[name]
    assert resource.gpu == int(gpus)
    assert resource.capabilities == {SLURM_GPU_TYPE: PRODUCT_NAMES[gpu].lower().replace(" ", "_")}
    assert SLURM_GPU_TYPE == "slurm/gpu_type"  # the key launcher/submit/slurm.py reads


# --- GKE ------------------------------------------------------------------------------------------------

GKE = sorted(name for name in NAMED_RESOURCES if name.startswith("gke_"))
# GKE's reservations (cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes, "Memory and CPU
# reservations"), as (upper bound of the tier, share) in GiB and cores, applied to the kubelet's capacity
MEMORY_TIERS = [(4, 0.25), (8, 0.20), (16, 0.10), (128, 0.06), (float("inf"), 0.02)]
CPU_TIERS = [(1, 0.06), (2, 0.01), (4, 0.005), (float("inf"), 0.0025)]
EVICTION_GIB = 100 / 1024


def reserved(amount, tiers):
    below = 0
    total = 0.0
    for upper, share in tiers:
        total += max(min(amount, upper) - below, 0) * share
        below = upper
    return total


def allocatable(machine):
    """(vCPUs, GiB) of a node: MemTotal (1.6 % under the nominal memory, 0.25 GiB more for the crash kernel),
    less GKE's tiers and the eviction threshold."""
    vcpus, gib = gke.MACHINES[machine]
    mem_total = gib * 0.984 - 0.25
    return vcpus - reserved(vcpus, CPU_TIERS), mem_total - reserved(mem_total, MEMORY_TIERS) - EVICTION_GIB


def machine_of(name):
    resource = named_resources[name]
    tpu = gke.tpu_slice(resource)
    if tpu:
        return tpu.version.machines[tpu.chips_per_host]
    return gke.GKE_GPUS[name[len("gke_") : name.rindex("_")]][1][resource.gpu]


def quantity(value: str) -> float:
    """A Kubernetes CPU ("94000m") or memory ("1421569M") quantity: cores or bytes."""
    units = {"m": 1e-3, "M": 1e6, "Mi": 2**20, "G": 1e9, "Gi": 2**30, "Ki": 2**10}
    number = value.rstrip("".join(units))
    return float(number) * units.get(value[len(number) :], 1)


def test_allocatable_matches_what_gke_reports():
    """Two shapes against the figures in the issue (v5p host: 448 GiB nominal, ~425.2 GiB allocatable)."""
    assert allocatable("ct5p-hightpu-4t")[1] == pytest.approx(425.2, abs=0.4)
    assert gke.gke_allocatable("ct5p-hightpu-4t") == pytest.approx(allocatable("ct5p-hightpu-4t"))
    assert gke.gke_allocatable("g2-standard-4") == pytest.approx(allocatable("g2-standard-4"))


def test_every_gke_resource_is_registered():
    assert len(GKE) == 16 + 26


@pytest.mark.parametrize("name", GKE)
def test_gke_resource_fits_its_machine_with_room_for_daemonsets(name):
    """The pod's requests and limits, as the Volcano job carries them, against its machine's allocatable less the
    DaemonSets' budget; and not much less (the pod takes the whole node)."""
    app = train(
        h=name,
        output_dir="gs://b/r",
        nnodes=gke.tpu_slice(named_resources[name]).hosts if gke.tpu_slice(named_resources[name]) else 1,
    )
    job = yaml.safe_load(str(get_runner().dryrun(app, "kubernetes", cfg={"queue": "default"}).request))
    cpu, gib = allocatable(machine_of(name))
    budget_cpu, budget_gib = gke.DAEMONSETS
    for task in job["spec"]["tasks"]:
        resources = task["template"]["spec"]["containers"][0]["resources"]
        for kind in ("requests", "limits"):
            asked = resources[kind]
            assert quantity(asked["cpu"]) <= cpu - budget_cpu, (name, kind, asked, cpu)
            assert quantity(asked["memory"]) <= (gib - budget_gib) * 2**30, (name, kind, asked, gib)
        assert quantity(resources["limits"]["cpu"]) > cpu - budget_cpu - 1
        assert quantity(resources["limits"]["memory"]) > (gib - budget_gib - 0.01) * 2**30


def test_gpus_without_a_named_resource_fit_the_smallest_gke_gpu_machine():
    """--gpu n alone asks per GPU what g2-standard-4 (4 vCPUs, 16 GiB, one L4) leaves a pod."""
    cpu, memMB = gke.gke_pod_size("g2-standard-4")
    resource = train(gpu=1, output_dir="gs://b/r").roles[0].resource
    assert (resource.cpu, resource.memMB) == (cpu, memMB) == (2, 11646)
    resource = train(gpu=8, output_dir="gs://b/r").roles[0].resource
    assert (resource.cpu, resource.memMB) == (16, 8 * 11646)
    assert resource.cpu <= gke.gke_pod_size("g2-standard-96")[0]


def test_the_guide_lists_each_gke_resource_with_its_machine_request_and_allocatable():
    guide = (ROOT / "docs" / "schedulers" / "kubernetes.md").read_text()
    for name in GKE:
        resource, machine = named_resources[name], machine_of(name)
        cpu, gib = gke.gke_allocatable(machine)
        request = f"{resource.cpu - 0.1:.1f} / {(resource.memMB - 1024) * 1e6 / 2**30:.1f}"
        assert f"| `{name}` | {machine} | " in guide and f"| {cpu:.2f} / {gib:.1f} | {request} |" in guide, name
