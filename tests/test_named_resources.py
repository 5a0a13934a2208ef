"""The Slurm named resources (`-h slurm_<gpu>_<n>`): they fit the common 8-GPU nodes and name their GPU type."""

import pytest
from torchx.specs import named_resources

from launcher.submit.named_resources import NAMED_RESOURCES, SLURM_GPU_TYPE

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
