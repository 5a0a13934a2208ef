"""`torchx run -s slurm` against a real Slurm cluster: two slurmd nodes on this host (tests/slurm/cluster.sh),
with and without accounting. Skipped, with the reason, only where the cluster cannot start (not root, no apt).

    bash tests/slurm/cluster.sh up [--no-accounting]; pytest -m slurm
"""

import json
import math
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

from tests.conftest import ROOT, make_rows, run_cli, run_main

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


def submit(*args, partition=None, cfg="time=20:00") -> str:
    """`torchx run -s slurm ...` -> the app handle; submitting must exit 0 in either accounting mode."""
    out = torchx("run", "-s", "slurm", "-cfg", f"partition={partition or PARTITION or 'debug'},{cfg}", *args)
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
    return len(re.findall(r"^\S+ start: job", batch_log(handle), re.M)) - 1


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
    app = materialize_appdef(train, ["--gpu", "1", *SMALL])
    script = get_runner().dryrun(app, "slurm", cfg={"partition": partition}).request.materialize()
    assert ("--gpus-per-node=1" in script) == ("gpu" in gres) and ("--exclusive" in script) == ("gpu" not in gres)


def tiny_train(tiny_model, data_dir: Path, epochs: int, rows: int = 120):
    for split, n, seed in (("train", rows, 0), ("validation", 30, 1), ("test", 30, 2)):
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
    """(the overrides of a 30-epoch tiny training run, the final weights of that run uninterrupted). One thread, as
    the jobs have: bound to the one CPU they ask for (SMALL), torch uses one, and another count sums in another
    order."""
    data = tmp_path_factory.mktemp("interrupted")
    args = tiny_train(tiny_model, data, epochs=30) + ["trainer.save_every=40", "trainer.eval_every=120"]
    straight = run_cli("train", *args, f"output_dir={data / 'straight'}", env={"OMP_NUM_THREADS": "1"})
    assert straight.returncode == 0, straight.stderr[-3000:]
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
    # what sbatch --signal=B:USR1@<s> does before the time limit, now: the batch shell passes it on to the steps
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id(handle)], check=True)
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


def preempt(handle: str) -> float:
    """A job in the `urgent` partition (higher PriorityTier) that needs both nodes whole: the job preempted gets
    SIGTERM at once and GraceTime to stop. Returns when it was submitted."""
    subprocess.run(
        ["sbatch", "--partition=urgent", "--nodes=2", "--exclusive", "--mem=3000", "--output=/dev/null"]
        + ["--job-name=urgent", "--wrap=sleep 5"],
        check=True,
        capture_output=True,
    )
    return time.time()


def requeues(handle: str) -> list:
    """The reasons the batch script requeued the job for, in order."""
    path = ROOT / "outputs" / "slurm" / f"slurm-{job_id(handle)}.requeues"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def two_process_run(tiny_model, tmp_path_factory):
    """(the overrides of a 2-process tiny training run, its final weights uninterrupted): torchrun on this host,
    the same world size as a 2-node job. The first run of the time-limit test must still be training when its
    SIGUSR1 comes, up to 75 s after it starts, on however fast a machine: where 100 epochs take less than
    REFERENCE_SECONDS here, the run is made proportionally longer (a CI machine trained them in 45 s)."""
    data = tmp_path_factory.mktemp("two-process")

    def reference(epochs: int):
        args = tiny_train(tiny_model, data, epochs=epochs, rows=360)
        args += ["trainer.save_every=200", "trainer.eval_every=100000"]
        straight = data / f"straight-{epochs}"
        started = time.time()
        out = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d"]
            + ["--rdzv_endpoint=localhost:0", "run.py", "train", *args, f"output_dir={straight}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        weights = torch.load(sorted((straight / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
        assert weights["world_size"] == 2
        return args, weights["model"], time.time() - started

    args, weights, seconds = reference(100)  # 1200 steps
    if seconds < REFERENCE_SECONDS:
        args, weights, seconds = reference(math.ceil(100 * REFERENCE_SECONDS * 1.2 / seconds))
    print(f"\ntwo-process reference: {seconds:.0f} s")
    return args, weights


REFERENCE_SECONDS = 110


def test_two_node_training_at_its_time_limit_checkpoints_requeues_and_ends_with_the_uninterrupted_weights(
    accounting_cluster, two_process_run, tmp_path
):
    """--time 2 min and SIGUSR1 45 s before it (0-30 s earlier: Slurm looks every 30 s): a run is cut short, it
    checkpoints on both nodes, the batch script requeues it (not counted as a failure), and the last run ends
    SUCCEEDED."""
    args, weights = two_process_run
    run = tmp_path / "run"
    handle = submit(
        "components/train.py:train", "--nnodes", "2", *SMALL, "--", *args, f"output_dir={run}",
        cfg="time=2,signal_seconds=45",
    )  # fmt: skip
    assert wait(handle, timeout=1500) == "SUCCEEDED", batch_log(handle) + replica_logs(handle)[-4000:]
    assert requeues(handle) and set(requeues(handle)) == {"timelimit"}, batch_log(handle)
    assert replica_logs(handle).count("stopped: SIGUSR1 at step") == len(requeues(handle)), replica_logs(handle)
    assert final_weights_equal(run, weights)
    print(f"\ntime limit: {len(requeues(handle))} requeue(s); {signal_to_checkpoint(handle)}")


def signal_to_checkpoint(handle: str) -> str:
    """Seconds from the batch shell's SIGUSR1 to srun's end (checkpoint written), per run, from the batch log."""
    times = re.findall(r"^(\d\d:\d\d:\d\d) (SIGUSR1|srun exited)", batch_log(handle), re.M)
    secs = [int(h) * 3600 + int(m) * 60 + int(s) for (t, _) in times for h, m, s in [t.split(":")]]
    pairs = [b - a for (a, (_, x)), (b, (_, y)) in zip(zip(secs, times), zip(secs[1:], times[1:])) if x == "SIGUSR1"]
    return f"signal to srun's end: {pairs} s"


@pytest.mark.parametrize("partition", ["debug", "cancel"], ids=["PreemptMode=REQUEUE", "PreemptMode=CANCEL"])
def test_preempted_two_node_training_is_requeued_and_ends_with_the_uninterrupted_weights(
    accounting_cluster, two_process_run, tmp_path, partition
):
    """Preemption by a job of a higher-priority partition: SIGTERM to the steps at once, the checkpoint within
    GraceTime, and the batch script requeues the job itself. With CANCEL Slurm would not; with REQUEUE it would
    only if the job were still running at the end of GraceTime."""
    if PARTITION:
        pytest.skip("needs the test cluster's partitions")
    args, weights = two_process_run
    run = tmp_path / "run"
    handle = submit(
        "components/train.py:train", "--nnodes", "2", *SMALL, "--", *args, f"output_dir={run}", partition=partition
    )
    wait_for_checkpoint(handle, run)
    preempted_at = preempt(handle)
    while status(handle) == "RUNNING" and time.time() - preempted_at < 120:
        time.sleep(0.5)
    stopped_after = time.time() - preempted_at
    deadline = time.time() + 300
    while status(handle) != "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
    running_again_after = time.time() - preempted_at
    assert wait(handle) == "SUCCEEDED", batch_log(handle) + replica_logs(handle)[-4000:]
    assert requeues(handle) == ["preempted"], batch_log(handle)
    assert replica_logs(handle).count("stopped: SIGTERM at step") == 1, replica_logs(handle)  # rank 0's line
    assert final_weights_equal(run, weights)
    print(
        f"\n{partition}: preemption to job stopped {stopped_after:.0f} s, to running again {running_again_after:.0f} s"
    )


def test_preempted_two_node_batch_infer_is_requeued_and_writes_every_id_once(accounting_cluster, tiny_model, tmp_path):
    if PARTITION:
        pytest.skip("needs the test cluster's partitions")
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
    assert not (out / "_SUCCESS").exists(), "the job finished before it could be preempted: make the input larger"
    preempt(handle)
    assert wait(handle) == "SUCCEEDED", batch_log(handle) + replica_logs(handle)[-4000:]
    assert requeues(handle) == ["preempted"], batch_log(handle)
    ids = pd.read_parquet(out)["id"]
    assert len(ids) == 20000 and ids.is_unique


def test_a_requeue_that_fails_ends_the_job_failed(accounting_cluster, interrupted_run, tmp_path):
    """`scontrol requeue` refused (JobRequeue=0 and --no-requeue sites, a slurmctld that does not answer): the job
    must not read SUCCEEDED with its training unfinished."""
    args, _ = interrupted_run
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(
        '#!/bin/bash\nif [ "$1" = requeue ]; then\n'
        '    echo "Requested operation is presently disabled for job $2" >&2; exit 1\nfi\n'
        'exec /usr/bin/scontrol "$@"\n'
    )
    (fake / "scontrol").chmod(0o755)
    run = tmp_path / "run"
    out = subprocess.run(
        [*TORCHX, "run", "-s", "slurm", "-cfg", f"partition={PARTITION or 'debug'},time=20:00"]
        + ["components/train.py:train", *SMALL, "--max_retries", "1", "--", *args, f"output_dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},  # sbatch passes it on to the batch script
    )
    assert out.returncode == 0, out.stderr[-3000:]
    handle = out.stdout.strip().splitlines()[-1]
    wait_for_checkpoint(handle, run)
    kill_the_worker(run)
    assert wait(handle) == "FAILED", batch_log(handle)
    assert "scontrol requeue" in batch_log(handle) and "failed" in batch_log(handle), batch_log(handle)
    assert (ROOT / "outputs" / "slurm" / f"slurm-{job_id(handle)}.exit").read_text().strip() == "1"


def test_list_shows_only_this_users_jobs(accounting_cluster):
    other = os.environ.get("TEXT_RECIPES_SLURM_OTHER_USER", "tr-other")
    if PARTITION:
        pytest.skip("needs the test cluster's second user")
    theirs = subprocess.run(
        ["runuser", "-u", other, "--", "sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null"]
        + [f"--partition={PARTITION or 'debug'}", "--mem=100", "--wrap=sleep 20"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = submit("utils.echo", "--msg", "mine")
    listed = torchx("list", "-s", "slurm")
    assert listed.returncode == 0, listed.stderr
    ids = re.findall(r"slurm://torchx/(\d+)", listed.stdout)
    assert job_id(ours) in ids and theirs not in ids, listed.stdout
    subprocess.run(["scancel", theirs])
    assert wait(ours) == "SUCCEEDED"


@pytest.mark.parametrize("cpus", [1, 2])
def test_each_task_holds_the_cpus_it_asked_for_with_binding_on(accounting_cluster, cpus):
    """task/affinity binds each task to its CPUs: exactly the CPUs asked (a node has 2), never fewer."""
    probe = "import os; print('cpus:', len(os.sched_getaffinity(0)))"
    handle = submit("utils.sh", "--cpu", str(cpus), "--memMB", "500", "python3", "-c", probe)
    assert wait(handle) == "SUCCEEDED", replica_logs(handle)
    assert re.findall(r"cpus: (\d+)", replica_logs(handle)) == [str(cpus)], replica_logs(handle)


def test_default_resources_that_no_node_holds_are_one_line_before_the_queue(accounting_cluster):
    out = torchx("run", "-s", "slurm", "-cfg", f"partition={PARTITION or 'debug'}", "components/train.py:train",
                 "--nnodes", "2")  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert re.search(r"asks mem=8192 MB, but the largest node of partition \S+ has \d+ MB", out.stderr), out.stderr
    assert not re.search(r"slurm://torchx/\d+", out.stdout)


def test_gpus_are_the_partitions_gres_of_the_type_asked(accounting_cluster):
    """--gpus-per-node=TYPE:N from -cfg gpu_type (or the named resource): Slurm sets CUDA_VISIBLE_DEVICES; a type
    the partition does not have is one line at submit."""
    if PARTITION:
        pytest.skip("needs the test cluster's GPUs")
    probe = "import os; print('devices:', os.environ.get('CUDA_VISIBLE_DEVICES'))"
    args = ["utils.sh", "--gpu", "2", "--memMB", "500", "python3", "-c", probe]
    out = torchx("run", "-s", "slurm", "-cfg", "partition=debug,gpu_type=nvidia_h100_80gb_hbm3", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    handle = out.stdout.strip().splitlines()[-1]
    assert wait(handle) == "SUCCEEDED", replica_logs(handle)
    assert "devices: 0,1" in replica_logs(handle)
    refused = torchx("run", "-s", "slurm", "-cfg", "partition=debug,gpu_type=nvidia_a100-sxm4-80gb", *args)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert (
        "GPU type nvidia_a100-sxm4-80gb: not in the GRES of partition debug (nvidia_h100_80gb_hbm3)" in refused.stderr
    )


@pytest.mark.parametrize("accounting", [True, False], ids=["accounting", "no-accounting"])
def test_log_follow_survives_slurm_not_answering_for_a_while(accounting, tmp_path):
    """squeue, sacct and scontrol all fail for 8 s while `torchx log -t` follows a running job (slurmctld busy or
    restarting): it keeps following and shows every line the job wrote."""
    cluster(accounting)
    fake, outage = tmp_path / "bin", tmp_path / "outage"
    fake.mkdir()
    for command in ("squeue", "sacct", "scontrol"):
        (fake / command).write_text(
            f'#!/bin/bash\nif [ -e {outage} ]; then echo "{command}: error: Socket timed out" >&2; exit 1; fi\n'
            f'exec /usr/bin/{command} "$@"\n'
        )
        (fake / command).chmod(0o755)
    handle = submit("utils.sh", "--memMB", "500", "bash", "-c", "for i in $(seq 1 12); do echo line-$i; sleep 2; done")
    follow = subprocess.Popen(
        [*TORCHX, "log", "-t", handle],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    for line in follow.stdout:
        seen.append(line)
        if "line-3" in line and not outage.exists():
            outage.touch()
            started = time.time()
        if outage.exists() and time.time() - started > 8:
            outage.unlink()
    assert follow.wait(timeout=120) == 0
    assert all(any(f"line-{i}" in s for s in seen) for i in range(1, 13)), "".join(seen)
    assert wait(handle) == "SUCCEEDED"
