"""`torchx run -s slurm` against a real Slurm cluster: two slurmd nodes on this host (tests/slurm/cluster.sh),
with and without accounting. Skipped, with the reason, only where the cluster cannot start (not root, no apt).

    bash tests/slurm/cluster.sh up [--no-accounting]; pytest -m slurm
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, make_rows, run_main

pytestmark = pytest.mark.slurm

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
TORCHX = [sys.executable, "-m", "torchx.cli.main"]
SMALL = ["--cpu", "1", "--memMB", "1000"]  # the test nodes declare 2 CPUs and 4000 MB each


PARTITION = os.environ.get("TEXT_RECIPES_SLURM_PARTITION")  # a real cluster's partition, instead of cluster.sh's


def cluster(accounting: bool) -> None:
    if PARTITION:
        if (subprocess.run(["sacct", "-n"], capture_output=True).returncode == 0) != accounting:
            pytest.skip(f"this cluster runs {'without' if accounting else 'with'} accounting")
        return
    out = subprocess.run(
        ["bash", str(CLUSTER), "up", *([] if accounting else ["--no-accounting"])],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if out.returncode == 3 and not os.environ.get("CI"):  # a laptop without root; CI must run this tier
        pytest.skip(f"no Slurm cluster here: {(out.stdout + out.stderr).strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture
def accounting_cluster():
    cluster(True)


def torchx(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHX, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def submit(*args) -> str:
    """`torchx run -s slurm ...` -> the app handle; submitting must exit 0 in either accounting mode."""
    out = torchx("run", "-s", "slurm", "-cfg", f"partition={PARTITION or 'debug'},time=20:00", *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    handle = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"slurm://torchx/\d+", handle), out.stdout
    return handle


def status(handle: str) -> str:
    out = torchx("status", handle)
    assert out.returncode == 0, out.stderr[-2000:]
    return re.search(r"State: (\w+)", out.stdout).group(1)


def wait(handle: str, timeout: float = 900, until=("SUCCEEDED", "FAILED", "CANCELLED")) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = status(handle)
        if state in until:
            return state
        time.sleep(2)
    subprocess.run(["scancel", job_id(handle)])
    raise AssertionError(f"{handle}: still {state} after {timeout} s\n{batch_log(handle)}")


def job_id(handle: str) -> str:
    return handle.rsplit("/", 1)[1]


def batch_log(handle: str) -> str:
    path = ROOT / "outputs" / "slurm" / f"slurm-{job_id(handle)}.out"
    return path.read_text() if path.exists() else ""


def replica_logs(handle: str) -> str:
    return "\n".join(
        f"== {p.name}\n{p.read_text()}" for p in sorted((ROOT / "outputs" / "slurm").glob(f"slurm-{job_id(handle)}-*"))
    )


def restarts(handle: str) -> int:
    return len(re.findall(r"^start: job", batch_log(handle), re.M)) - 1


@pytest.mark.parametrize("accounting", [True, False], ids=["accounting", "no-accounting"])
def test_status_logs_and_list_right_after_submit_and_after_the_end(accounting):
    cluster(accounting)
    assert (subprocess.run(["sacct", "-n"], capture_output=True).returncode == 0) == accounting
    handle = submit("utils.echo", "--msg", "hello-from-slurm")
    assert status(handle) in ("PENDING", "RUNNING", "SUCCEEDED")  # not UNKNOWN, not an error
    logs = torchx("log", "-t", handle, timeout=300)  # right after submit: waits for the job, then follows it
    assert logs.returncode == 0 and "hello-from-slurm" in logs.stdout, logs.stdout + logs.stderr
    assert wait(handle) == "SUCCEEDED"
    listed = torchx("list", "-s", "slurm")
    assert listed.returncode == 0 and job_id(handle) in listed.stdout, listed.stdout + listed.stderr
    assert not list(ROOT.glob(f"slurm-{job_id(handle)}*")), "logs belong in outputs/slurm, not the checkout"
    assert (ROOT / "outputs" / "slurm" / f"slurm-{job_id(handle)}.exit").read_text().strip() == "0"
    stderr_only = torchx("log", "--streams", "stderr", handle)
    assert stderr_only.returncode == 0 and "hello-from-slurm" not in stderr_only.stdout


def test_gpu_request_auto_reads_the_partitions_gres(accounting_cluster):
    """auto asks sinfo about the partition it submits to: --gpus-per-node where it has gpu GRES, else whole nodes."""
    from torchx.runner import get_runner
    from torchx.specs.builders import materialize_appdef

    from components.train import train

    partition = PARTITION or "debug"
    gres = subprocess.run(
        ["sinfo", "--noheader", "--format=%G", f"--partition={partition}"], capture_output=True, text=True, check=True
    ).stdout
    app = materialize_appdef(train, ["--gpu", "1"])
    script = get_runner().dryrun(app, "slurm", cfg={"partition": partition}).request.materialize()
    assert ("--gpus-per-node=1" in script) == ("gpu" in gres) and ("--exclusive" in script) == ("gpu" not in gres)


def tiny_train(tiny_model, data_dir: Path, epochs: int):
    for split, n, seed in (("train", 120, 0), ("validation", 30, 1), ("test", 30, 2)):
        pd.DataFrame(make_rows(n, seed)).to_csv(data_dir / f"{split}.csv", index=False)
    return [
        "model.name=tiny",
        f"model.name_or_path={tiny_model}",
        "model.max_length=32",
        "data=files",
        *(f"data.{s}={data_dir / s}.csv" for s in ("train", "validation", "test")),
        f"trainer.epochs={epochs}",
        "trainer.batch_size=16",
        "trainer.precision=fp32",
        "optim.warmup_fraction=0",
        "optim.lr=5e-3",
    ]


def test_two_node_train_then_evaluate_then_two_node_batch_infer(accounting_cluster, tiny_model, tmp_path):
    args = tiny_train(tiny_model, tmp_path, epochs=4)
    run = tmp_path / "run"
    started = time.time()
    train = submit("components/train.py:train", "--nnodes", "2", *SMALL, "--", *args, f"output_dir={run}")
    assert wait(train) == "SUCCEEDED", replica_logs(train)[-4000:]
    train_seconds = time.time() - started
    ckpt = torch.load(sorted((run / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["state"]["step"] == 16  # 120 rows / 16 per batch / 2 ranks x 4 epochs

    evaluate = submit(
        "components/evaluate.py:evaluate",
        *SMALL,
        "--checkpoint",
        str(run / "model"),
        "--",
        *[a for a in args if a.startswith("data")],
    )
    assert wait(evaluate) == "SUCCEEDED", replica_logs(evaluate)[-4000:]
    (metrics,) = run.glob("eval-files-test-*/metrics.json")
    assert json.loads(metrics.read_text())["accuracy"] > 0.5

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"doc-{i}", "text": r["text"]}) + "\n" for i, r in enumerate(make_rows(600, 7)))
    )
    started = time.time()
    infer = submit(
        "components/infer.py:batch_infer",
        "--nnodes",
        "2",
        *SMALL,
        "--model",
        str(run / "model"),
        "--input",
        str(corpus),
        "--output",
        str(tmp_path / "preds"),
        "--",
        "block_rows=50",
    )
    assert wait(infer) == "SUCCEEDED", replica_logs(infer)[-4000:]
    infer_seconds = time.time() - started
    preds = pd.read_parquet(tmp_path / "preds")
    assert sorted(preds["id"]) == sorted(f"doc-{i}" for i in range(600))
    head_log = (ROOT / "outputs" / "slurm" / f"slurm-{job_id(infer)}-infer-0.err").read_text()
    assert "2 Ray node(s) up, head at node1:" in head_log  # the worker group joined from node2
    print(f"\nslurm wall times: 2-node train {train_seconds:.0f} s, 2-node batch_infer {infer_seconds:.0f} s")


@pytest.fixture(scope="module")
def interrupted_run(tiny_model, tmp_path_factory):
    """(the overrides of a 30-epoch tiny training run, the final weights of that run uninterrupted)."""
    data = tmp_path_factory.mktemp("interrupted")
    args = tiny_train(tiny_model, data, epochs=30) + ["trainer.save_every=40", "trainer.eval_every=120"]
    assert run_main("train", *args, f"output_dir={data / 'straight'}").returncode == 0
    weights = torch.load(sorted((data / "straight" / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)["model"]
    return args, weights


def final_weights_equal(run: Path, weights: dict) -> bool:
    last = torch.load(sorted((run / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)["model"]
    return last.keys() == weights.keys() and all(torch.equal(last[k], weights[k]) for k in weights)


def wait_for_checkpoint(handle: str, run: Path) -> None:
    deadline = time.time() + 300
    while not list((run / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    assert status(handle) == "RUNNING", replica_logs(handle)[-4000:]


def test_sigusr1_checkpoints_requeues_and_ends_with_the_uninterrupted_weights(
    accounting_cluster, interrupted_run, tmp_path
):
    args, weights = interrupted_run
    run = tmp_path / "run"
    handle = submit("components/train.py:train", *SMALL, "--", *args, f"output_dir={run}")
    wait_for_checkpoint(handle, run)
    # what sbatch --signal=USR1@<s> does before the time limit, now
    subprocess.run(["scancel", "--signal=USR1", job_id(handle)], check=True)
    assert wait(handle) == "SUCCEEDED", replica_logs(handle)[-4000:]
    assert restarts(handle) == 1, batch_log(handle)
    assert "SIGUSR1 at step" in replica_logs(handle)
    assert final_weights_equal(run, weights)


def kill_the_worker(run: Path) -> None:
    """kill -9 of the training process writing to `run` (an OOM kill, a crash): not a signal the recipe handles."""
    target = f"output_dir={run}".encode()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target in cmdline and any(a.endswith(b"run.py") for a in cmdline) and b"launcher.job.elastic" not in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)
            return
    raise AssertionError(f"no training process writes to {run}")


@pytest.mark.parametrize("max_retries", [1, 0])
def test_max_retries_requeues_a_failed_job_that_then_resumes(
    accounting_cluster, interrupted_run, tmp_path, max_retries
):
    """--max_retries 1: a worker killed mid-run fails the first run; the batch script requeues the job and the rerun
    resumes from the newest checkpoint to the uninterrupted run's weights. --max_retries 0: the job ends FAILED."""
    args, weights = interrupted_run
    run = tmp_path / "run"
    handle = submit(
        "components/train.py:train", *SMALL, "--max_retries", str(max_retries), "--", *args, f"output_dir={run}"
    )
    wait_for_checkpoint(handle, run)
    kill_the_worker(run)
    if max_retries:
        assert wait(handle) == "SUCCEEDED", replica_logs(handle)[-4000:]
        assert restarts(handle) == 1 and "resuming" in replica_logs(handle), batch_log(handle)
        assert final_weights_equal(run, weights)
    else:
        assert wait(handle) == "FAILED", replica_logs(handle)[-4000:]
        assert restarts(handle) == 0, batch_log(handle)


def test_batch_infer_requeued_mid_run_writes_every_id_once(accounting_cluster, tiny_model, tmp_path):
    args = tiny_train(tiny_model, tmp_path, epochs=1)
    assert run_main("train", *args, f"output_dir={tmp_path / 'run'}").returncode == 0
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"doc-{i}", "text": r["text"]}) + "\n" for i, r in enumerate(make_rows(20000, 3)))
    )
    out = tmp_path / "preds"
    handle = submit(
        "components/infer.py:batch_infer",
        "--nnodes",
        "2",
        *SMALL,
        "--model",
        str(tmp_path / "run" / "model"),
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--",
        "block_rows=500",
        "batch_size=8",
    )
    deadline = time.time() + 300
    while len(list(out.glob("part-*"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert not (out / "_SUCCESS").exists(), "the job finished before it could be requeued: make the input larger"
    subprocess.run(["scontrol", "requeue", job_id(handle)], check=True)
    assert wait(handle) == "SUCCEEDED", replica_logs(handle)[-4000:]
    assert restarts(handle) == 1, batch_log(handle)
    ids = pd.read_parquet(out)["id"]
    assert len(ids) == 20000 and ids.is_unique
