"""SIGTERM / SIGUSR1 during training: checkpoint at the step, exit PREEMPTED (75), and the rerun ends
with the weights of an uninterrupted run. On Slurm the batch script requeues on 75 (tests/test_slurm.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli, run_main

pytestmark = pytest.mark.slow  # training runs signalled mid-run, in their own processes

PREEMPTED = 75


def final_weights(run: Path) -> dict:
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    return torch.load(ckpts[-1], weights_only=False)["model"]


def interrupt(cmd, run: Path, sig: int) -> subprocess.CompletedProcess:
    """Start `cmd`, send `sig` once its first checkpoint exists, and wait for it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((run / "checkpoints").glob("step_*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def same_weights(a: Path, b: Path) -> bool:
    x, y = final_weights(a), final_weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_sigterm_checkpoints_exits_75_and_resumes_to_the_same_weights(train_args, tmp_path):
    args = [a for a in train_args if not a.startswith("output_dir=")] + [
        "trainer.epochs=10",
        "trainer.save_every=10",
        "trainer.eval_every=40",
    ]
    assert run_main("train", *args, f"output_dir={tmp_path / 'straight'}").returncode == 0

    run = tmp_path / "preempted"
    out = interrupt([sys.executable, str(ROOT / "run.py"), "train", *args, f"output_dir={run}"], run, signal.SIGTERM)
    assert out.returncode == PREEMPTED, out.stderr[-2000:]
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "SIGTERM at step" in errors[0] and "Traceback" not in out.stderr, out.stderr[-2000:]
    stopped_at = int(errors[0].split("at step ")[1].split(":")[0])
    assert 0 < stopped_at < 80
    assert (run / "checkpoints" / f"step_{stopped_at:08d}.pt").exists() and not (run / "metrics.json").exists()

    resumed = run_cli("train", *args, f"output_dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step {stopped_at}" in resumed.stdout + resumed.stderr
    assert same_weights(tmp_path / "straight", run)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 80


def test_sigusr1_to_torchrun_reaches_both_ranks_and_the_rerun_matches(train_args, tmp_path):
    """What Slurm's --signal=USR1@<s> does to the torchrun agent of a 2-process job."""
    args = [a for a in train_args if not a.startswith("output_dir=")] + [
        "trainer.epochs=12",
        "trainer.save_every=4",
        "trainer.eval_every=24",
    ]
    torchrun = [
        sys.executable,
        "-m",
        "launcher.job.elastic",
        "--standalone",
        "--nproc_per_node",
        "2",
        "run.py",
        "train",
        *args,
    ]
    subprocess.run(
        [*torchrun, f"output_dir={tmp_path / 'straight'}"], cwd=ROOT, capture_output=True, check=True, timeout=600
    )

    run = tmp_path / "preempted"
    out = interrupt([*torchrun, f"output_dir={run}"], run, signal.SIGUSR1)
    assert out.returncode == PREEMPTED, out.stderr[-3000:]
    assert "SIGUSR1 at step" in out.stderr and "Traceback" not in out.stderr
    assert not (run / "metrics.json").exists()

    subprocess.run([*torchrun, f"output_dir={run}"], cwd=ROOT, capture_output=True, check=True, timeout=600)
    assert same_weights(tmp_path / "straight", run)
    assert (
        json.loads((run / "metrics.json").read_text())["steps"] == 48
    )  # 120 rows / 16 / 2 ranks = 4 steps x 12 epochs


def test_rerun_with_another_number_of_processes_is_refused_in_one_line(train_args, tmp_path):
    args = [a for a in train_args if not a.startswith("output_dir=")] + [
        "trainer.epochs=1",
        f"output_dir={tmp_path / 'run'}",
    ]
    torchrun = [
        sys.executable,
        "-m",
        "launcher.job.elastic",
        "--standalone",
        "--nproc_per_node",
        "2",
        "run.py",
        "train",
        *args,
    ]
    subprocess.run(torchrun, cwd=ROOT, capture_output=True, check=True, timeout=600)
    (tmp_path / "run" / "metrics.json").unlink()  # as if stopped before the end
    out = run_main("train", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        "written by 2 processes, this job has 1" in out.stderr and "start fresh with another output_dir" in out.stderr
    )
