"""gs:// data, output directory, resume and evaluation against a real GCS-API emulator."""
import json
import os
import socket
import subprocess
import sys
import time

import fsspec
import pytest

from tests.conftest import run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port), "--in-memory",
                             "--default-bucket", "bucket", "-q"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    # the emulator speaks JSON/HTTP only: turn off gcsfs's gRPC (zonal/HNS) probing
    env = {"STORAGE_EMULATOR_HOST": host, "GOOGLE_CLOUD_PROJECT": "test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    os.environ.update(env)
    try:
        yield env, fsspec.filesystem("gcs", token="anon", skip_instance_cache=True)
    finally:
        for k in env:
            os.environ.pop(k, None)
        proc.kill()
        proc.wait()


def test_train_and_evaluate_on_gs_urls(gcs, train_args, tiny_data, tmp_path):
    env, fs = gcs
    for split, path in tiny_data.items():
        fs.put(path, f"bucket/data/{split}.csv")
    args = [a for a in train_args if not a.startswith(("data.", "output_dir"))] + [
        "data.train=gs://bucket/data/train.csv", "data.validation=gs://bucket/data/validation.csv",
        "data.test=gs://bucket/data/test.csv", "output_dir=gs://bucket/runs/r1",
    ]
    cache = {"TEXT_RECIPES_CACHE": str(tmp_path / "cache"), **env}
    out = run_cli("train", *args, env=cache)
    assert out.returncode == 0, out.stderr[-3000:]
    listing = {p.rsplit("/", 1)[-1] for p in fs.ls("bucket/runs/r1")}
    assert {"model", "metrics.json", "config.yaml", "training_curve.png", "checkpoints", "tb"} <= listing
    assert not any(name.endswith(".partial") for name in listing)
    assert json.loads(fs.cat("bucket/runs/r1/metrics.json"))["steps"] == 32

    # relaunching on a machine with an empty local cache resumes from the bucket's checkpoint
    out = run_cli("train", *args, env={**cache, "TEXT_RECIPES_CACHE": str(tmp_path / "other-cache")})
    assert out.returncode == 0 and "resuming" in out.stdout + out.stderr, out.stderr[-3000:]

    out = run_cli("evaluate", "checkpoint=gs://bucket/runs/r1/model", "data=files", "data.train=gs://bucket/data/train.csv",
                  "data.test=gs://bucket/data/test.csv", "output_dir=gs://bucket/evals/r1", env=cache)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(fs.cat("bucket/evals/r1/metrics.json"))["examples"] == 30
    assert fs.exists("bucket/evals/r1/predictions.jsonl")
