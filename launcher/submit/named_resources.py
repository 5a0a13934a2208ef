"""Named resources (`-h <name>`) for the machines these jobs run on, registered on `torchx.named_resources`.

Slurm GPU nodes: `slurm_<gpu>_<n>` asks for n GPUs of an 8-GPU SXM node (HGX/DGX class) with
8 CPUs and 80 GiB of host memory per GPU (SLURM_PER_GPU): all 8 GPUs ask 64 CPUs and 640 GiB. A request
above a node's CPUs or RealMemory pends forever, so this is sized to the smaller common nodes of these
GPUs, after the OS and Slurm take their share (RealMemory, MemSpecLimit, CoreSpecCount):
- 64 CPUs: the cores of a 2 x 32-core HGX server where Slurm counts cores; the other common 8-GPU nodes
  have more (Compute Engine a2-highgpu-8g, AWS p4d.24xlarge, Azure ND96asr_v4: 96 vCPUs;
  DGX H100: 112 cores; DGX A100: 128 cores).
- 640 GiB: 40 GiB below the smallest, a2-highgpu-8g's 680 GiB, for the OS, slurmd and filesystem
  clients; Azure ND96asr_v4 has 900 GiB, 1 TiB HGX/DGX A100 nodes about that after the OS, DGX H100 2 TiB.
- per GPU that is at least the GPU's own memory on the host (loading a model, writing a checkpoint) and
  8 CPUs for a trainer process with its data loading and tokenization; n < 8 GPUs ask n/8 of a node,
  so 8/n such jobs share one.
Each also names its GPU type, the Slurm GRES type, in its capabilities (SLURM_GPU_TYPE), which
launcher/submit/slurm.py turns into --gpus-per-node=TYPE:n, so slurm_h100_80gb_8 never lands on the
A100 nodes of a mixed partition. The types are the names Slurm's NVML AutoDetect (gres.conf
AutoDetect=nvml) gives: the GPU's product name, lowercased, spaces made underscores
(`nvidia-smi --query-gpu=name` "NVIDIA H100 80GB HBM3": nvidia_h100_80gb_hbm3). Sites name types
themselves in gres.conf (`Name=gpu Type=h100 ...`; `sinfo -o %G` lists a partition's); where theirs
differ, `-cfg gpu_type=TYPE` (the slurm scheduler's option) overrides the resource's.

GKE nodes: `gke_<gpu>_<n>` is n GPUs (L4, A100 40/80 GB, H100) of the smallest machine type that has
them, and `gke_tpu_<version>_<topology>` one host of a TPU slice (all its chips); a slice of several
hosts runs one replica per host (`--nnodes` = `tpu_slice(resource).hosts`). Each asks for the whole node:
what GKE leaves allocatable on that machine type (gke_allocatable) less a budget for the node's
DaemonSets. A pod with all of a node's GPUs or TPUs has the node to itself anyway, so CPUs and memory
it did not ask for would sit idle; sized for the smallest machine type with those accelerators, it also
fits the larger ones (gke_l4_1: g2-standard-4, also g2-standard-8 to -32). Their capabilities are the
node labels GKE puts on such nodes, which launcher/submit/kubernetes.py turns into nodeSelectors.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from torchx.specs import Resource

GiB = 1024

# Resource.capabilities key: the GRES type of a Slurm resource's GPUs (launcher/submit/slurm.py reads it)
SLURM_GPU_TYPE = "slurm/gpu_type"
# name: GRES type, as NVML AutoDetect names the SXM GPUs of 8-GPU HGX/DGX nodes
SLURM_GPUS = {
    "a100_40gb": "nvidia_a100-sxm4-40gb",
    "a100_80gb": "nvidia_a100-sxm4-80gb",
    "h100_80gb": "nvidia_h100_80gb_hbm3",
}
SLURM_PER_GPU = (8, 80 * GiB)  # CPUs, memMB (MiB, as Slurm's --mem reads it) per GPU

GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GKE_TPU_ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY = "cloud.google.com/gke-tpu-topology"
TPU = "google.com/tpu"  # the TPU chips of a node, as GKE's device plugin names them

# machine type: (vCPUs, memory in GiB), as Compute Engine's machine-family pages list them (accelerator-optimized:
# G2, A2, A3; TPU: the "Plan TPUs in GKE" machine types). GKE turns them into allocatable below (gke_allocatable).
MACHINES = {
    "g2-standard-4": (4, 16),
    "g2-standard-24": (24, 96),
    "g2-standard-48": (48, 192),
    "g2-standard-96": (96, 384),
    "a2-highgpu-1g": (12, 85),
    "a2-highgpu-2g": (24, 170),
    "a2-highgpu-4g": (48, 340),
    "a2-highgpu-8g": (96, 680),
    "a2-ultragpu-1g": (12, 170),
    "a2-ultragpu-2g": (24, 340),
    "a2-ultragpu-4g": (48, 680),
    "a2-ultragpu-8g": (96, 1360),
    "a3-highgpu-1g": (26, 234),
    "a3-highgpu-2g": (52, 468),
    "a3-highgpu-4g": (104, 936),
    "a3-highgpu-8g": (208, 1872),
    "ct5lp-hightpu-1t": (24, 48),
    "ct5lp-hightpu-4t": (112, 192),
    "ct5lp-hightpu-8t": (224, 384),
    "ct6e-standard-1t": (44, 176),
    "ct6e-standard-4t": (180, 720),
    "ct6e-standard-8t": (180, 1440),
    "ct5p-hightpu-4t": (208, 448),
    "ct4p-hightpu-4t": (240, 407),
}

# name: (GKE accelerator label, machine type per GPU count)
GKE_GPUS = {
    "l4": ("nvidia-l4", {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}),
    "a100_40gb": ("nvidia-tesla-a100", {n: f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)}),
    "a100_80gb": ("nvidia-a100-80gb", {n: f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)}),
    "h100_80gb": ("nvidia-h100-80gb", {n: f"a3-highgpu-{n}g" for n in (1, 2, 4, 8)}),
}


@dataclass(frozen=True)
class TpuVersion:
    label: str  # cloud.google.com/gke-tpu-accelerator
    accelerator: str  # TPU API accelerator type prefix, as libtpu and torch_xla read it (TPU_ACCELERATOR_TYPE)
    cores_per_chip: int  # the accelerator type counts TensorCores
    machines: Dict[int, str]  # chips per host: machine type


TPU_VERSIONS = {
    "v5e": TpuVersion(
        "tpu-v5-lite-podslice", "v5litepod", 1, {1: "ct5lp-hightpu-1t", 4: "ct5lp-hightpu-4t", 8: "ct5lp-hightpu-8t"}
    ),
    "v6e": TpuVersion("tpu-v6e-slice", "v6e", 1, {1: "ct6e-standard-1t", 4: "ct6e-standard-4t", 8: "ct6e-standard-8t"}),
    "v5p": TpuVersion("tpu-v5p-slice", "v5p", 2, {4: "ct5p-hightpu-4t"}),
    "v4": TpuVersion("tpu-v4-podslice", "v4", 2, {4: "ct4p-hightpu-4t"}),
}
# topology: chips per host. Slices up to 8 chips of v5e/v6e fit one host; larger ones are hosts of 4 chips.
TPU_SLICES = {
    "v5e": {"1x1": 1, "2x2": 4, "2x4": 8, "4x4": 4, "4x8": 4, "8x8": 4, "8x16": 4, "16x16": 4},
    "v6e": {"1x1": 1, "2x2": 4, "2x4": 8, "4x4": 4, "4x8": 4, "8x8": 4, "8x16": 4, "16x16": 4},
    "v5p": {"2x2x1": 4, "2x2x2": 4, "2x2x4": 4, "2x4x4": 4, "4x4x4": 4},
    "v4": {"2x2x1": 4, "2x2x2": 4, "2x2x4": 4, "2x4x4": 4, "4x4x4": 4},
}
CHIPS_PER_HOST_BOUNDS = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}

# What a pod may ask of a GKE node (plan-node-sizes, "Memory and CPU reservations"): the kubelet's capacity less
# GKE's reservation tiers and the 100 MiB eviction threshold, less what the node's DaemonSets ask. The capacity of
# memory is the kernel's MemTotal, not the machine's nominal memory: the kernel keeps its page tables and image,
# about 1.6 % (KERNEL_SHARE) plus, on small machines, the crash kernel (KERNEL_GIB).
KERNEL_SHARE, KERNEL_GIB = 0.016, 0.25
CPU_RESERVED = ((1, 0.06), (1, 0.01), (2, 0.005), (math.inf, 0.0025))  # (cores, share) tiers
MEMORY_RESERVED = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02))  # (GiB, share) tiers
EVICTION_GIB = 100 / 1024
# GKE's own DaemonSets on a GPU or TPU node (kube-proxy, fluentbit, gke-metrics-agent, pdcsi-node, the device
# plugin, gke-metadata-server) request together roughly 0.5 vCPU and 1 GiB (not measured here); twice that leaves
# room for one more of the cluster's own (a log or metrics agent)
DAEMONSETS = (1.0, 2.0)  # vCPUs, GiB


def _reserved(amount: float, tiers) -> float:
    reserved = 0.0
    for size, share in tiers:
        reserved += min(amount, size) * share
        amount = max(amount - size, 0)
    return reserved


def gke_allocatable(machine: str) -> Tuple[float, float]:
    """(vCPUs, GiB) that the kubelet of a GKE node of this machine type leaves allocatable to pods."""
    vcpus, gib = MACHINES[machine]
    memory = gib * (1 - KERNEL_SHARE) - KERNEL_GIB
    return vcpus - _reserved(vcpus, CPU_RESERVED), memory - _reserved(memory, MEMORY_RESERVED) - EVICTION_GIB


def gke_pod_size(machine: str) -> Tuple[int, int]:
    """(cpu, memMB) of a pod that takes a whole node of this machine type, its DaemonSets' budget left over.

    memMB is what torchx writes as the pod's memory limit, in Kubernetes "M" (10^6 bytes); it requests 1024 M less."""
    cpu, gib = gke_allocatable(machine)
    return math.floor(cpu - DAEMONSETS[0]), math.floor((gib - DAEMONSETS[1]) * 2**30 / 10**6)


def gke_per_gpu() -> Tuple[int, int]:
    """(cpu, memMB) per GPU that a pod of n GPUs may ask on every GKE GPU machine type with n GPUs."""
    sizes = [(gke_pod_size(m), n) for _, machines in GKE_GPUS.values() for n, m in machines.items()]
    return min(cpu // n for (cpu, _), n in sizes), min(mem // n for (_, mem), n in sizes)


def _slurm_gpu_node(gpu_type: str, gpus: int) -> Callable[[], Resource]:
    cpu, memMB = SLURM_PER_GPU
    return lambda: Resource(cpu=cpu * gpus, gpu=gpus, memMB=memMB * gpus, capabilities={SLURM_GPU_TYPE: gpu_type})


def _gke_gpu_node(label: str, machine: str, gpus: int) -> Callable[[], Resource]:
    cpu, memMB = gke_pod_size(machine)
    return lambda: Resource(cpu=cpu, gpu=gpus, memMB=memMB, capabilities={GKE_ACCELERATOR: label})


def _gke_tpu_host(version: TpuVersion, topology: str, chips: int) -> Callable[[], Resource]:
    cpu, memMB = gke_pod_size(version.machines[chips])
    labels = {GKE_TPU_ACCELERATOR: version.label, GKE_TPU_TOPOLOGY: topology}
    return lambda: Resource(cpu=cpu, gpu=0, memMB=memMB, devices={TPU: chips}, capabilities=labels)


@dataclass(frozen=True)
class TpuSlice:
    """A TPU slice as its host's Resource describes it, with what libtpu needs to know of it."""

    version: TpuVersion
    topology: Tuple[int, int, int]
    chips_per_host: int

    @property
    def chips(self) -> int:
        return math.prod(self.topology)

    @property
    def hosts(self) -> int:
        return max(self.chips // self.chips_per_host, 1)

    @property
    def accelerator_type(self) -> str:
        return f"{self.version.accelerator}-{self.chips * self.version.cores_per_chip}"

    @property
    def chips_per_host_bounds(self) -> Tuple[int, int, int]:
        return CHIPS_PER_HOST_BOUNDS[self.chips_per_host]

    @property
    def host_bounds(self) -> Tuple[int, int, int]:
        return tuple(max(t // c, 1) for t, c in zip(self.topology, self.chips_per_host_bounds))


def tpu_slice(resource: Resource) -> Optional[TpuSlice]:
    """The slice a GKE TPU resource is one host of; None for any other resource."""
    label, topology = resource.capabilities.get(GKE_TPU_ACCELERATOR), resource.capabilities.get(GKE_TPU_TOPOLOGY)
    if TPU not in resource.devices or topology is None:
        return None
    version = next((v for v in TPU_VERSIONS.values() if v.label == label), None)
    if version is None:
        return None
    dims = tuple(int(d) for d in topology.split("x"))
    return TpuSlice(version, dims + (1,) * (3 - len(dims)), int(resource.devices[TPU]))


NAMED_RESOURCES: Dict[str, Callable[[], Resource]] = {
    **{f"slurm_{gpu}_{n}": _slurm_gpu_node(gpu_type, n) for gpu, gpu_type in SLURM_GPUS.items() for n in (1, 2, 4, 8)},
    **{
        f"gke_{gpu}_{n}": _gke_gpu_node(label, machine, n)
        for gpu, (label, machines) in GKE_GPUS.items()
        for n, machine in machines.items()
    },
    **{
        f"gke_tpu_{v}_{topology}": _gke_tpu_host(TPU_VERSIONS[v], topology, chips)
        for v, slices in TPU_SLICES.items()
        for topology, chips in slices.items()
    },
}

globals().update(NAMED_RESOURCES)  # each entry point names a module attribute
