"""A replica given GPUs or TPUs that it cannot use stops before work in one line (recipes/devices.py), on every
scheduler: the components tell it what it was given. This machine has no GPU, no NVIDIA driver and no torch_xla,
which is the case of a GPU pod whose driver is too old for the image's CUDA build and of a TPU pod on the wrong
image."""

import pytest
from torchx.runner import get_runner

from components.evaluate import evaluate
from components.train import train
from recipes import devices
from tests.conftest import run_main


@pytest.mark.parametrize(
    "given, device, expected",
    [
        (
            "gpu:1",
            "auto",
            ["trainer.device=auto: this replica was given 1 GPU(s)", "CUDA build None", "CPU-only build"],
        ),
        ("gpu:8", "cuda", ["trainer.device=cuda: this replica was given 8 GPU(s)", "NVIDIA driver none loaded"]),
        ("tpu:4", "auto", ["trainer.device=auto: this replica was given 4 TPU chip(s)", "torch_xla is not installed"]),
        ("tpu:4", "tpu", ["PJRT_DEVICE=(unset)"]),
    ],
)
def test_a_replica_given_accelerators_it_cannot_use_stops_before_work(train_args, tmp_path, given, device, expected):
    ran = run_main("train", *train_args, f"trainer.device={device}", env={devices.GIVEN_ENV: given})
    assert ran.returncode == 2
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(e in line for e in expected), line
    assert not (tmp_path / "run").exists()  # nothing written: no work started


def test_evaluate_stops_as_training_does(tmp_path):
    ran = run_main(
        "evaluate", f"checkpoint={tmp_path / 'm'}", env={devices.GIVEN_ENV: "gpu:1", "CUDA_VISIBLE_DEVICES": "0"}
    )
    assert ran.returncode == 2
    assert "device=auto: this replica was given 1 GPU(s)" in ran.stderr and "CUDA_VISIBLE_DEVICES=0" in ran.stderr


def test_device_cpu_is_what_the_user_asked_and_auto_without_accelerators_is_the_cpu(monkeypatch):
    monkeypatch.setenv(devices.GIVEN_ENV, "gpu:1")
    assert devices.resolve("cpu", "trainer.device", xla_installed=False) == "cpu"
    monkeypatch.delenv(devices.GIVEN_ENV)
    assert devices.resolve("auto", "trainer.device", xla_installed=False) == "cpu"  # a laptop
    monkeypatch.setenv(devices.GIVEN_ENV, "tpu:4")
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert devices.resolve("auto", "trainer.device", xla_installed=True) == "tpu"  # a TPU pod of the tpu image
    monkeypatch.setenv(devices.GIVEN_ENV, "gpus")
    with pytest.raises(devices.RecipeError, match="TEXT_RECIPES_GIVEN='gpus': expected gpu:N or tpu:N"):
        devices.given()


def test_driver_version_is_read_from_the_kernel_module(tmp_path, monkeypatch):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.230.02  Release Build\n")
    monkeypatch.setattr(devices, "NVIDIA_VERSION", version)
    assert devices.driver_version() == "535.230.02"


@pytest.mark.parametrize(
    "scheduler, cfg", [("local_cwd", {}), ("slurm", {"partition": "gpu"}), ("kubernetes", {"queue": "default"})]
)
def test_every_scheduler_tells_the_replica_what_it_was_given(scheduler, cfg):
    for app, given in (
        (train(gpu=2, output_dir="gs://b/r"), "gpu:2"),
        (train(h="gke_h100_80gb_8", output_dir="gs://b/r"), "gpu:8"),
        (train(h="gke_tpu_v5p_2x2x2", nnodes=2, output_dir="gs://b/r"), "tpu:4"),
        (evaluate(checkpoint="gs://b/m", gpu=1), "gpu:1"),
    ):
        request = str(get_runner().dryrun(app, scheduler, cfg=cfg).request)
        assert f"{devices.GIVEN_ENV}" in request and given in request, (scheduler, given)
    assert devices.GIVEN_ENV not in str(get_runner().dryrun(train(output_dir="gs://b/r"), scheduler, cfg=cfg).request)


def test_a_batch_infer_replica_given_gpus_stops_before_ray_starts(capsys):
    from launcher.job import ray_cluster

    with pytest.raises(SystemExit) as exit:
        ray_cluster.main(["--replica-id", "0", "--nnodes", "1", "--head", "localhost:0", "--job-id", "j", "--gpus", "1",
                          "--", "python3", "run.py", "infer"])  # fmt: skip
    assert exit.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --gpus=1: this replica was given 1 GPU(s)")
