"""The pods of `torchx run -s kubernetes` jobs, run from their manifests (tests/kubernetes/executor.py): every pod's
container command as a process on this machine with exactly its env, working directory and args, its hostname
`<pod>.<job>` resolving to a loopback address of its own. Root: the executor writes /etc/hosts and gives each pod
its own UTS namespace; not root, these tests skip, and with CI set they fail."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torchx.runner import get_runner
from torchx.specs import VolumeMount

from components.infer import batch_infer
from components.train import train
from launcher.job import ray_cluster
from tests.conftest import ROOT, make_rows, run_main
from tests.kubernetes import executor

pytestmark = pytest.mark.slow
SECRET = "pod-test-secret-" + "7" * 40


@pytest.fixture(autouse=True)
def as_root():
    if os.geteuid() != 0:
        why = "the pod executor writes /etc/hosts and unshares UTS namespaces: run as root"
        pytest.fail(f"CI: {why}") if os.environ.get("CI") else pytest.skip(why)


def manifest(app, **cfg) -> dict:
    return yaml.safe_load(str(get_runner().dryrun(app, "kubernetes", cfg={"queue": "default", **cfg}).request))


def logs_of(path) -> str:
    return "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(path.glob("*.log")))


def weights_of(run) -> dict:
    return torch.load(sorted((run / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)


def test_two_pod_c10d_training_matches_a_local_two_process_run(train_args, tmp_path):
    runs = tmp_path / "runs"  # a volume mounted into both pods (a PersistentVolumeClaim), here the same directory
    args = [a for a in train_args if not a.startswith("output_dir=")] + ["trainer.epochs=2"]
    app = train(*args, nnodes=2, output_dir=str(runs / "pods"), env={"HF_HUB_OFFLINE": "1"}, image="text-recipes:t")
    app.roles[0].mounts = [VolumeMount(src="runs", dst_path=str(runs))]
    job = manifest(app)
    pods = executor.pods(job, secrets={}, home=tmp_path / "home")
    assert [p.env.get("TORCHX_RANK0_HOST") for p in pods] == ["localhost", None]
    hosts_before = executor.HOSTS.read_text()
    with executor.hosts_entries(pods):
        # pod 1 reaches pod 0's c10d store by its pod name, not localhost
        assert socket.gethostbyname(pods[1].env["VC_TRAIN_0_HOSTS"]) == pods[0].address != "127.0.0.1"
        codes = executor.run(pods, tmp_path / "logs", timeout=300)
    assert executor.HOSTS.read_text() == hosts_before
    assert list(codes.values()) == [0, 0], logs_of(tmp_path / "logs")

    threads = str(torch.get_num_threads())  # what each pod's one worker ran with; torchrun sets 1 for 2 workers
    local = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
         "--rdzv_endpoint=localhost:0", "run.py", "train", *args, f"output_dir={runs / 'local'}"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": threads}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    pod_run, local_run = weights_of(runs / "pods"), weights_of(runs / "local")
    assert pod_run["world_size"] == local_run["world_size"] == 2
    assert pod_run["state"]["step"] == local_run["state"]["step"] > 0
    assert pod_run["model"].keys() == local_run["model"].keys()
    assert all(torch.equal(pod_run["model"][k], local_run["model"][k]) for k in local_run["model"])


def test_three_pod_batch_infer_forms_one_ray_cluster_and_scores_every_id_once(train_args, tmp_path):
    trained = run_main("train", *train_args, "trainer.max_steps=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = tmp_path / "run" / "model"
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(150, seed=7))]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "scored"
    app = batch_infer(
        "block_rows=25", "batch_size=16", "precision=fp32", model=str(model), input=str(source), output=str(out),
        nnodes=3, cpu=1, memMB=2000, env={"HF_HUB_OFFLINE": "1"}, image="text-recipes:t",
    )  # fmt: skip
    app.roles[0].mounts = [VolumeMount(src="out", dst_path=str(tmp_path / "out"))]
    job = manifest(app, secret_env=[f"{ray_cluster.SECRET_ENV}:text-recipes-ray/secret"])
    assert SECRET not in json.dumps(job)
    pods = executor.pods(job, secrets={("text-recipes-ray", "secret"): SECRET}, home=tmp_path / "home")
    assert all(p.env[ray_cluster.SECRET_ENV] == SECRET for p in pods)  # from the Secret, not from the manifest
    started = time.time()
    with executor.hosts_entries(pods):
        codes = executor.run(pods, tmp_path / "logs", timeout=240)
    logs = logs_of(tmp_path / "logs")
    assert list(codes.values()) == [0, 0, 0], logs
    head = f"{pods[0].hostname}:{ray_cluster.job_port(job['metadata']['name'])}"
    assert "3 Ray node(s) up" in logs
    assert logs.count(f"joining the head at {head}") == 2, logs  # the workers reach the head by its pod name
    assert SECRET not in logs and ray_cluster.job_token(SECRET.encode(), job["metadata"]["name"]) not in logs

    got = pd.read_parquet(out)
    assert sorted(got.id) == sorted(r["id"] for r in rows)  # every id exactly once
    probs = in_process_probabilities(str(model), [r["text"] for r in rows])
    got = got.set_index("id").loc[[r["id"] for r in rows]]
    np.testing.assert_allclose(got.score, probs.max(1), atol=1e-5)
    print(f"\n3-pod batch_infer: {time.time() - started:.0f} s")


def in_process_probabilities(model_dir: str, texts) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        logits = [model(**tokenizer(t, truncation=True, return_tensors="pt")).logits[0] for t in texts]
    return np.stack([torch.softmax(x, -1).numpy() for x in logits])


def test_two_host_v5p_pods_get_the_topology_torch_xla_computes_from_their_env(tmp_path):
    """Each pod of a v5p 2x2x2 slice (2 hosts of 4 chips) runs torch_xla's PJRT topology setup
    (tests/kubernetes/torch_xla_tpu.py) for its 4 processes from its env alone, in its own hostname."""
    app = train(h="gke_tpu_v5p_2x2x2", nnodes=2, nproc_per_node=4, output_dir="gs://b/r", image="text-recipes:tpu")
    pods = executor.pods(manifest(app), secrets={}, home=tmp_path / "home")
    probe = [sys.executable, str(ROOT / "tests" / "kubernetes" / "torch_xla_tpu.py"), "4"]
    for pod in pods:
        pod.command = probe
    with executor.hosts_entries(pods):
        codes = executor.run(pods, tmp_path / "logs", timeout=60)
        assert list(codes.values()) == [0, 0], logs_of(tmp_path / "logs")
        seen = [json.loads((tmp_path / "logs" / f"{p.name}.log").read_text()) for p in pods]
        addresses = {h: socket.gethostbyname(h) for h in pods[0].env["TPU_WORKER_HOSTNAMES"].split(",")}
    processes = [proc for host in seen for proc in host["processes"]]
    assert [host["worker_id"] for host in seen] == [0, 1]
    assert [host["hostname"] for host in seen] == [p.name for p in pods]
    assert {p["TPU_PROCESS_BOUNDS"] for p in processes} == {"2,2,2"}  # 8 processes, one per chip of the slice
    assert {p["TPU_CHIPS_PER_PROCESS_BOUNDS"] for p in processes} == {"1,1,1"}
    assert sorted(int(p["CLOUD_TPU_TASK_ID"]) for p in processes) == list(range(8))
    assert [p["TPU_VISIBLE_CHIPS"] for p in processes] == ["0", "1", "2", "3"] * 2
    peers = [f"{p.hostname}:{port}" for p in pods for port in range(8476, 8480)]
    assert {p["TPU_PROCESS_ADDRESSES"] for p in processes} == {",".join(peers)}
    assert list(addresses.values()) == [p.address for p in pods]  # each peer's name is its own pod's address
