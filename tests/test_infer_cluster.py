"""`batch_infer`: its AppDef and dryruns, and the Ray cluster its replicas form (launcher/job/ray_cluster.py).

The cluster tests start real Ray nodes on this machine, as local_cwd runs a multi-replica job: the
bootstrap with a stand-in driver (exit status, teardown, token authentication), then the whole
`torchx run -s local_cwd` job on a trained tiny model.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torchx.runner import get_runner
from torchx.specs import macros
from torchx.specs.builders import materialize_appdef
from torchx.specs.finder import ComponentValidationException

from components.infer import batch_infer
from launcher.job import ray_cluster
from tests.conftest import ROOT, make_rows, run_main

TORCHX = [sys.executable, "-m", "torchx.cli.main"]
SECRET = "test-secret-" + "5" * 40
FILES = dict(model="outputs/run/model", input="data/in.jsonl", output="outputs/scored")


def bash_args(app) -> list:
    role = app.roles[0]
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return shlex.split(role.args[1])


# --- the AppDef -------------------------------------------------------------------------------------


def test_every_replica_runs_the_bootstrap_and_replica_0_the_driver():
    app = batch_infer("batch_size=8", **FILES, nnodes=3, cpu=4, memMB=16000, ray_port=6390, max_retries=2)
    role = app.roles[0]
    args = bash_args(app)
    split = args.index("--")
    assert args[:split] == [
        "python3",
        "-m",
        "launcher.job.ray_cluster",
        "--replica-id",
        macros.replica_id,
        "--nnodes",
        "3",
        "--head",
        f"$${{{macros.rank0_env}:=localhost}}:6390",
        "--job-id",
        macros.app_id,  # "$$": a literal "$" for TorchX
        "--cpus",
        "4",
        "--gpus",
        "0",
        "--join-timeout",
        "600",
    ]
    assert args[split + 1 :] == [
        "python3",
        "run.py",
        "infer",
        "gpus_per_actor=0",
        "batch_size=8",
        "model_dir=outputs/run/model",
        "input=data/in.jsonl",
        "output=outputs/scored",
    ]
    assert role.num_replicas == 3 and role.max_retries == 2 and role.port_map == {"ray": 6390}
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (4, 0, 16000)


def test_gpus_give_one_actor_per_gpu_unless_overridden():
    args = bash_args(batch_infer(**FILES, gpu=4))
    assert args[args.index("--gpus") + 1] == "4" and "gpus_per_actor=1" in args
    args = bash_args(batch_infer("gpus_per_actor=2", **FILES, gpu=4))
    assert args.index("gpus_per_actor=2") > args.index("gpus_per_actor=1")  # Hydra: the last one wins


def test_named_resource_sizes_the_ray_node():
    app = batch_infer(**FILES, h="gpu.small", cpu=64)
    args = bash_args(app)
    resource = app.roles[0].resource
    assert (
        args[args.index("--cpus") + 1] == str(resource.cpu)
        and args[args.index("--gpus") + 1] == str(resource.gpu) == "1"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="Infer_Job"), "--name 'Infer_Job'"),
        (dict(nnodes=0), "--nnodes=0: must be at least 1"),
        (dict(ray_port=80), "--ray_port=80: expected a port from 1024 to 65535"),
        (dict(join_timeout=0), "--join_timeout=0: must be at least 1"),
        (dict(env={"TEXT_RECIPES_RAY_SECRET": "abc"}), "--env TEXT_RECIPES_RAY_SECRET: looks like a secret"),
        (dict(overrides=("batch_sise=8",)), "batch_sise: unknown key"),
        (dict(overrides=("precision=int4",)), "precision='int4'"),
    ],
)
def test_bad_arguments_fail_when_the_appdef_is_built(kwargs, message):
    overrides = kwargs.pop("overrides", ())
    with pytest.raises(ComponentValidationException) as e:
        batch_infer(*overrides, **{**FILES, **kwargs})
    assert message in str(e.value) and "\n" not in str(e.value)


# --- what the schedulers get --------------------------------------------------------------------------


@pytest.fixture
def secret_in_env(monkeypatch):
    """The secret as a launching shell would hold it: it must reach no job definition."""
    monkeypatch.setenv(ray_cluster.SECRET_ENV, SECRET)


def test_cli_dryrun_help_and_builtins(secret_in_env):
    out = subprocess.run(
        [
            *TORCHX,
            "run",
            "--dryrun",
            "-s",
            "local_cwd",
            "components/infer.py:batch_infer",
            "--nnodes",
            "2",
            "--model",
            "m",
            "--input",
            "in.jsonl",
            "--output",
            "out",
            "--",
            "batch_size=8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "launcher.job.ray_cluster" in out.stdout and "--replica-id '1'" in out.stdout
    )  # the dryrun lists both replicas
    assert "${TORCHX_RANK0_HOST:=localhost}:0" in out.stdout  # port 0: ray_cluster derives it from the job id
    assert SECRET not in out.stdout + out.stderr
    bad = subprocess.run(
        [
            *TORCHX,
            "run",
            "--dryrun",
            "-s",
            "local_cwd",
            "components/infer.py:batch_infer",
            "--model",
            "m",
            "--input",
            "in.jsonl",
            "--output",
            "in.jsonl",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "output='in.jsonl': must differ from input" in bad.stderr
    help_out = subprocess.run(
        [*TORCHX, "run", "components/infer.py:batch_infer", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for arg in (
        "--model",
        "--input",
        "--output",
        "--nnodes",
        "--gpu",
        "--ray_port",
        "--join_timeout",
        "Hydra overrides",
    ):
        assert arg in help_out.stdout
    builtins = subprocess.run([*TORCHX, "builtins"], capture_output=True, text=True, timeout=120)
    assert "text_recipes.infer.batch_infer" in builtins.stdout.split()


def test_slurm_dryrun_two_nodes(secret_in_env, tmp_path):
    app = materialize_appdef(
        batch_infer, ["--nnodes", "2", "--gpu", "4", "--model", "m", "--input", "in.jsonl", "--output", "out"]
    )
    script = get_runner().dryrun(app, "slurm", cfg={"partition": "gpu"}).request.materialize()
    assert (
        "#SBATCH --job-name=text-recipes-infer.infer-0" in script
        and "#SBATCH --job-name=text-recipes-infer.infer-1" in script
        and "#SBATCH hetjob" in script
    )
    assert SECRET not in script and "RAY_AUTH_TOKEN" not in script
    # what each task runs: the script under bash, with an srun that prints its arguments
    (tmp_path / "job.sh").write_text(
        script.replace("#!/bin/bash\n", "#!/bin/bash\nsrun() { printf '%s\\n' \"$@\"; }\n", 1)
    )
    (tmp_path / "outputs" / "slurm").mkdir(parents=True)
    srun = subprocess.run(
        ["bash", str(tmp_path / "job.sh")],
        env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "4242"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    tasks = [
        shlex.split(line) for line in srun.stdout.splitlines() if line.startswith("python3 -m launcher.job.ray_cluster")
    ]
    assert len(tasks) == 2
    for replica, args in enumerate(tasks):
        assert args[args.index("--replica-id") + 1] == str(replica) and args[args.index("--job-id") + 1] == "4242"
        assert (
            args[args.index("--head") + 1] == "${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:0"
        )  # the task's shell fills it
        assert (args[args.index("--gpus") + 1], args[args.index("--cpus") + 1]) == ("4", "8")  # 2 CPUs per GPU
        assert args[args.index("--") + 1 :] == [
            "python3",
            "run.py",
            "infer",
            "gpus_per_actor=1",
            "model_dir=m",
            "input=in.jsonl",
            "output=out",
        ]


# --- the token ----------------------------------------------------------------------------------------


def test_token_is_per_job_and_per_secret():
    assert ray_cluster.job_token(b"s", "job-1") == ray_cluster.job_token(b"s", "job-1")
    assert (
        len(
            {
                ray_cluster.job_token(b"s", "job-1"),
                ray_cluster.job_token(b"s", "job-2"),
                ray_cluster.job_token(b"t", "job-1"),
            }
        )
        == 3
    )


def test_secret_file_is_made_once_private_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_cluster.SECRET_ENV, raising=False)
    path = tmp_path / "home" / ".config" / "text-recipes" / "ray-secret"
    monkeypatch.setattr(ray_cluster, "SECRET_FILE", path)
    secret = ray_cluster.cluster_secret()
    assert (
        len(secret) == 64
        and stat.S_IMODE(path.stat().st_mode) == 0o600
        and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    )
    assert ray_cluster.cluster_secret() == secret and os.listdir(path.parent) == ["ray-secret"]
    monkeypatch.setenv(ray_cluster.SECRET_ENV, "from-a-kubernetes-secret")
    assert ray_cluster.cluster_secret() == b"from-a-kubernetes-secret"
    monkeypatch.delenv(ray_cluster.SECRET_ENV)
    path.chmod(0o640)
    with pytest.raises(ray_cluster.ClusterError, match="other users can read it; chmod 600"):
        ray_cluster.cluster_secret()


def test_kubernetes_replicas_need_the_secret_from_a_secret(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_cluster.SECRET_ENV, raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setattr(ray_cluster, "SECRET_FILE", tmp_path / "ray-secret")
    with pytest.raises(ray_cluster.ClusterError, match=f"set {ray_cluster.SECRET_ENV} from a Secret"):
        ray_cluster.replica_token(2, "job-1")
    assert ray_cluster.replica_token(1, "job-1") != ray_cluster.replica_token(1, "job-1")  # one replica: a random token
    assert not (tmp_path / "ray-secret").exists()


# --- the cluster, with a stand-in driver --------------------------------------------------------------

STAND_IN_DRIVER = textwrap.dedent("""
    import json, os, pathlib, sys, time
    import ray
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    token = pathlib.Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text()
    files = [p for p in pathlib.Path(os.environ["TMPDIR"]).rglob("*") if p.is_file() and p.name != "token"]
    leaks = [str(p) for p in files if token in p.read_text(errors="ignore")]
    environ = {k: v for k, v in os.environ.items() if token in v or k in ("RAY_AUTH_TOKEN", "TEXT_RECIPES_RAY_SECRET")}
    command_lines, processes = [], 0
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        processes += bool(cmdline)
        if token.encode() in cmdline:
            command_lines.append(cmdline.replace(b"\\0", b" ").decode(errors="replace"))
    print("DRIVER", json.dumps({"nodes": len(nodes), "cpus": ray.cluster_resources()["CPU"], "ray_files": len(files),
                                "leaks": leaks, "environ": environ,
                                "command_lines": command_lines, "processes": processes}), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    sys.exit(int(sys.argv[1]))
""")


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    """Environment of the replicas: a short TMPDIR of their own (Ray's unix socket paths must stay short)."""
    tmpdir = tempfile.mkdtemp(prefix="trc-")
    (tmp_path / "driver.py").write_text(STAND_IN_DRIVER)
    monkeypatch.chdir(ROOT)
    yield {**os.environ, "TMPDIR": tmpdir, ray_cluster.SECRET_ENV: SECRET}
    shutil.rmtree(tmpdir, ignore_errors=True)


def bootstrap(
    replica: int, nnodes: int, port: int, env: dict, *driver: str, job_id="job-1", timeout=60
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "launcher.job.ray_cluster",
        "--replica-id",
        str(replica),
        "--nnodes",
        str(nnodes),
        "--head",
        f"localhost:{port}",
        "--job-id",
        job_id,
        "--cpus",
        "1",
        "--join-timeout",
        str(timeout),
        "--",
        *driver,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_ray_processes() -> dict:
    """pid: command line of the Ray processes a bootstrap started: they inherit its RAY_AUTH_TOKEN_PATH
    (their command lines do not tell: Ray renames its workers)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and re.search(
                rb"(^|\0)RAY_AUTH_TOKEN_PATH=[^\0]*/tr-ray-", (proc / "environ").read_bytes()
            ):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


def assert_no_ray_left(before: dict, tmpdir: str = None) -> None:
    """Called once the bootstraps exited: a replica exits only after its Ray node's processes are gone."""
    left = {pid: cmd for pid, cmd in job_ray_processes().items() if pid not in before}
    assert not left, left
    if tmpdir:
        assert os.listdir(tmpdir) == [], "temp dirs (token, Ray's logs) left behind"


def driver_report(stdout: str) -> dict:
    return json.loads(re.search(r"^DRIVER (.*)$", stdout, re.M).group(1))


@pytest.mark.slow
def test_head_runs_the_driver_on_every_node_and_exits_with_its_status(cluster_env, tmp_path):
    before = job_ray_processes()
    port = ray_cluster.free_port()
    worker = bootstrap(1, 2, port, cluster_env)
    head = bootstrap(0, 2, port, cluster_env, sys.executable, str(tmp_path / "driver.py"), "3")
    head_out, head_err = head.communicate(timeout=120)
    worker_out, worker_err = worker.communicate(timeout=60)
    assert head.returncode == 3, head_err  # the driver's
    assert worker.returncode == 0, worker_err
    report = driver_report(head_out)
    assert report["nodes"] == 2 and report["cpus"] == 2
    assert report["processes"] > 5 and report["command_lines"] == []  # no process of the machine shows the token
    assert report["ray_files"] > 10 and report["leaks"] == [] and report["environ"] == {}
    assert "2 Ray node(s) up" in head_err and "is gone (the driver ended); leaving" in worker_err
    assert "Ray runtime started" not in head_err + head_out  # Ray's banner stays in its own log
    assert_no_ray_left(before, cluster_env["TMPDIR"])


@pytest.mark.slow
def test_sigterm_to_the_replica_stops_driver_and_ray(cluster_env, tmp_path):
    """As on Kubernetes, where only the container's first process gets SIGTERM."""
    before = job_ray_processes()
    head = bootstrap(0, 1, ray_cluster.free_port(), cluster_env, sys.executable, str(tmp_path / "driver.py"), "hang")
    assert head.stdout.readline().startswith("DRIVER")
    head.send_signal(signal.SIGTERM)
    assert head.wait(timeout=60) == 128 + signal.SIGTERM
    assert_no_ray_left(before, cluster_env["TMPDIR"])


def test_a_taken_head_port_is_one_line_before_ray_starts(cluster_env, tmp_path):
    """A head left by a job killed moments ago still holds the port (or any listener does): Ray's own failure would
    be an authentication traceback once the new head met the old one."""
    with socket.socket() as taken:
        taken.bind(("localhost", 0))
        taken.listen()
        port = taken.getsockname()[1]
        head = bootstrap(0, 1, port, cluster_env, sys.executable, str(tmp_path / "driver.py"), "0")
        _, err = head.communicate(timeout=60)
    assert head.returncode == 1 and "Traceback" not in err
    assert re.search(rf"^error: port {port} on localhost is taken, so the Ray head cannot start there", err, re.M)
    assert not (tmp_path / "ray").exists() and "Ray runtime started" not in err


@pytest.mark.slow
def test_head_gives_up_when_the_other_replicas_do_not_join(cluster_env, tmp_path):
    before = job_ray_processes()
    port = ray_cluster.free_port()
    head = bootstrap(0, 2, port, cluster_env, sys.executable, str(tmp_path / "driver.py"), "0", timeout=2)
    _, err = head.communicate(timeout=120)
    assert head.returncode == 1
    assert re.search(
        rf"^error: [01] of 2 Ray nodes joined the head at localhost:{port} within 2 s: are the other replicas running",
        err,
        re.M,
    )
    assert_no_ray_left(before)


@pytest.mark.slow
def test_node_or_driver_without_the_token_cannot_join(cluster_env, tmp_path):
    before = job_ray_processes()
    port = ray_cluster.free_port()
    head = bootstrap(0, 2, port, cluster_env, sys.executable, str(tmp_path / "driver.py"), "0", timeout=300)
    deadline = time.monotonic() + 60
    while not ray_cluster.reachable("localhost", port):
        assert head.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    intruders = [
        bootstrap(1, 2, port, cluster_env, job_id="job-2"),  # same secret, another job: another token
        bootstrap(1, 2, port, {**cluster_env, ray_cluster.SECRET_ENV: "another-secret"}),
        subprocess.Popen(
            [sys.executable, "-c", f"import ray; ray.init(address='localhost:{port}')"],
            cwd=ROOT,
            env={k: v for k, v in cluster_env.items() if not k.startswith("RAY_")},
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    for worker in intruders[:2]:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 1
        (error,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert error.startswith(
            "error: this replica's Ray node stopped while the head is up: the Ray head refused this replica's token"
        )
    _, err = intruders[2].communicate(timeout=120)
    assert intruders[2].returncode != 0 and "InvalidAuthToken" in err
    assert head.poll() is None  # still waiting for its second node: none joined
    head.send_signal(signal.SIGTERM)
    assert head.wait(timeout=60) == 128 + signal.SIGTERM
    assert_no_ray_left(before)


# --- the whole job ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_replica_local_cwd_job_predicts_every_row_once(train_args, tmp_path):
    """`torchx run -s local_cwd` with 2 replicas (head + worker) on a trained tiny model."""
    trained = run_main("train", *train_args, "trainer.max_steps=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = tmp_path / "run" / "model"
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(200, seed=5))]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs, out = tmp_path / "logs", tmp_path / "scored"
    before = job_ray_processes()

    job = subprocess.run(
        [
            *TORCHX,
            "run",
            "-s",
            "local_cwd",
            "-cfg",
            f"log_dir={logs}",
            "components/infer.py:batch_infer",
            "--nnodes",
            "2",
            "--cpu",
            "1",
            "--ray_port",
            str(ray_cluster.free_port()),
            "--model",
            str(model),
            "--input",
            str(source),
            "--output",
            str(out),
            "--",
            "block_rows=32",
            "batch_size=16",
            "precision=fp32",  # compared with torch's fp32 below, whatever auto would pick
        ],
        cwd=ROOT,
        env={**os.environ, ray_cluster.SECRET_ENV: SECRET},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-5000:]

    got = pd.read_parquet(out)
    assert sorted(got.id) == sorted(r["id"] for r in rows)  # every id exactly once
    got = got.set_index("id").loc[[r["id"] for r in rows]]
    probs = in_process_probabilities(str(model), [r["text"] for r in rows])
    id2label = json.loads((model / "config.json").read_text())["id2label"]
    assert list(got.label) == [id2label[str(j)] for j in probs.argmax(1)]
    np.testing.assert_allclose(got.score, probs.max(1), atol=1e-4)  # ONNX Runtime fp32, the default here

    app_id = re.search(r"local_cwd://torchx/([\w-]+)", job.stdout + job.stderr).group(1)
    token = ray_cluster.job_token(SECRET.encode(), app_id)
    log_files = [p for p in logs.rglob("*") if p.is_file()]
    replica_logs = "".join(p.read_text(errors="ignore") for p in log_files)
    assert "2 Ray node(s) up" in replica_logs and "leaving" in replica_logs
    assert token not in replica_logs and SECRET not in replica_logs
    assert_no_ray_left(before)


@pytest.mark.slow
def test_rerun_at_once_after_kill_9_of_a_two_replica_job_resumes_exactly_once(train_args, tmp_path):
    """kill -9 of the whole local job (torchx, both replicas, their Ray nodes) mid-run, then the same command at
    once: the new job derives its own head port, so it meets no dying head, and it predicts each row once."""
    from tests.test_infer import kill_9_job

    trained = run_main("train", *train_args, "trainer.max_steps=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(3000, seed=5))]
    source, out = tmp_path / "in.jsonl", tmp_path / "scored"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [*TORCHX, "run", "-s", "local_cwd", "components/infer.py:batch_infer", "--nnodes", "2", "--cpu", "1"]
    cmd += ["--model", str(tmp_path / "run" / "model"), "--input", str(source), "--output", str(out), "--"]
    cmd += ["block_rows=50", "batch_size=4", "engine=torch"]  # slow enough to be killed halfway
    env = {**os.environ, ray_cluster.SECRET_ENV: SECRET}
    first = subprocess.Popen(  # a session of its own: kill_9_job finds every process the job started by it
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while len(list((out / "_done").glob("*.json"))) < 10 and time.time() < deadline:
        time.sleep(0.2)
    kill_9_job(first)
    done = [m.stem for m in (out / "_done").glob("*.json")]
    assert 10 <= len(done) < 60 and not (out / "_SUCCESS").exists()
    kept = {name: (out / f"{name}.parquet").stat() for name in done}

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    got = pd.read_parquet(out)
    assert sorted(got.id) == sorted(r["id"] for r in rows)  # every id exactly once
    for name, st in kept.items():  # resumed: what was committed before the kill is not written again
        now = (out / f"{name}.parquet").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name


def in_process_probabilities(model_dir: str, texts) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        return np.stack(
            [
                torch.softmax(model(**tokenizer(t, truncation=True, return_tensors="pt")).logits[0], -1).numpy()
                for t in texts
            ]
        )
