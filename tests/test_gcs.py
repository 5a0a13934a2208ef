"""gs:// everywhere (data, models, run outputs, checkpoints, evaluation, batch inference) against a GCS emulator.

gcp-storage-emulator (JSON API only) is started by the `gcs` fixture; the commands get STORAGE_EMULATOR_HOST and
nothing else (no gcsfs switches), as a user would set it, so whatever gcsfs prints against it shows up here.
GOOGLE_APPLICATION_CREDENTIALS points nowhere: a command that looked for credentials instead of using the
emulator anonymously fails.
"""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, make_rows, run_cli
from tests.test_infer import LABELS, kill_9_job, reference, save_classifier

pytestmark = pytest.mark.gcs  # against a GCS emulator (gcp-storage-emulator), started per test

# gcsfs/gRPC noise: the bucket-layout probe ("Could not determine bucket type ..."), its gRPC handshakes,
# credential lookups
NOISE = re.compile(r"gcsfs|bucket type|storage ?layout|HNS|grpc|ssl_transport|[Cc]redentials|Traceback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs(tmp_path):
    """(env for the commands, a gcsfs filesystem on the emulator for the test's own reads and writes)."""
    import gcsfs.core

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            "bucket",
            "-q",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "the GCS emulator did not start"
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": host,
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no-such-credentials.json"),
        "TEXT_RECIPES_CACHE": str(tmp_path / "cache"),
    }
    try:
        # no listings cache: the commands change the bucket behind its back
        yield (
            env,
            gcsfs.core.GCSFileSystem(
                endpoint_url=host, token="anon", skip_instance_cache=True, use_listings_cache=False
            ),
        )
    finally:
        proc.kill()
        proc.wait()


def quiet(out) -> str:
    """Output of a command that succeeded, with no gcsfs/gRPC warnings in it."""
    text = out if isinstance(out, str) else out.stdout + out.stderr
    if not isinstance(out, str):
        assert out.returncode == 0, f"rc={out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    noise = [line for line in text.splitlines() if NOISE.search(line)]
    assert not noise, "\n".join(noise[:5])
    return text


def upload_dir(fs, local, url: str) -> None:
    fs.put(str(local), url.removeprefix("gs://"), recursive=True)
    assert fs.exists(url.removeprefix("gs://") + "/config.json")


def last_checkpoint_weights(load, names) -> dict:
    return torch.load(load(sorted(n for n in names if re.search(r"step_\d+\.pt$", n))[-1]), weights_only=False)["model"]


def test_train_kill_9_resume_and_evaluate_on_gs(gcs, train_args, tiny_model, tiny_data, tmp_path):
    """Model, data and run directory on gs://; kill -9 after the first checkpoint reached the bucket; the rerun, on a
    machine with an empty cache, resumes from the bucket to the weights of an uninterrupted run; evaluation from gs://."""
    env, fs = gcs
    upload_dir(fs, tiny_model, "gs://bucket/base")
    for split, path in tiny_data.items():
        fs.put(path, f"bucket/data/{split}.csv")
    data = [
        "data.train=gs://bucket/data/train.csv",
        "data.validation=gs://bucket/data/validation.csv",
        "data.test=gs://bucket/data/test.csv",
    ]
    args = (
        [a for a in train_args if not a.startswith(("data.", "output_dir", "model.name_or_path"))]
        + data
        + ["model.name_or_path=gs://bucket/base", "trainer.save_every=4", "trainer.eval_every=8"]
    )  # 32 steps

    quiet(run_cli("train", *args, f"output_dir={tmp_path / 'straight'}", env=env))

    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "train", *args, "output_dir=gs://bucket/runs/r1"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 300
            while not fs.glob("bucket/runs/r1/checkpoints/step_*.pt"):
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    quiet(log.read_text())
    first = sorted(fs.glob("bucket/runs/r1/checkpoints/step_*.pt"))
    assert first[-1].rsplit("/", 1)[-1] < "step_00000032.pt" and not fs.exists("bucket/runs/r1/metrics.json")

    out = quiet(
        run_cli(
            "train",
            *args,
            "output_dir=gs://bucket/runs/r1",
            env={**env, "TEXT_RECIPES_CACHE": str(tmp_path / "other-machine")},
        )
    )
    assert "resuming gs://bucket/runs/r1 from step" in out
    listing = {p.rsplit("/", 1)[-1] for p in fs.ls("bucket/runs/r1")}
    assert {"model", "metrics.json", "config.yaml", "training_curve.png", "checkpoints", "tb"} <= listing
    assert not any(
        n.rsplit("/", 1)[-1].startswith(".") or n.endswith((".tmp", ".partial")) for n in fs.find("bucket/runs/r1")
    )
    assert json.loads(fs.cat("bucket/runs/r1/metrics.json"))["steps"] == 32
    straight = last_checkpoint_weights(lambda p: p, [str(p) for p in (tmp_path / "straight" / "checkpoints").iterdir()])
    resumed = last_checkpoint_weights(lambda p: io.BytesIO(fs.cat(p)), fs.ls("bucket/runs/r1/checkpoints"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)

    quiet(
        run_cli(
            "evaluate",
            "checkpoint=gs://bucket/runs/r1/model",
            "data=files",
            *data[:1],
            *data[2:],
            "output_dir=gs://bucket/evals/r1",
            env=env,
        )
    )
    result = json.loads(fs.cat("bucket/evals/r1/metrics.json"))
    assert result["examples"] == 30 and result["checkpoint"] == "gs://bucket/runs/r1/model"
    assert len(fs.cat("bucket/evals/r1/predictions.jsonl").decode().splitlines()) == 30
    assert fs.cat("bucket/evals/r1/confusion_matrix.png")[:4] == b"\x89PNG"


def test_model_uploaded_to_gs_for_evaluate_and_batch_infer_with_kill_9_and_rerun(gcs, tiny_data, tmp_path):
    """A model directory in the bucket scores labeled data (evaluate) and a gs:// corpus (infer, Ray workers writing
    to the bucket); a kill -9 mid-run leaves committed shards that the rerun keeps; a third run does nothing."""
    env, fs = gcs
    upload_dir(fs, save_classifier(tmp_path / "model", multi=False), "gs://bucket/models/m")

    quiet(
        run_cli(
            "evaluate",
            "checkpoint=gs://bucket/models/m",
            "data=files",
            f"data.test={tiny_data['test']}",
            "output_dir=gs://bucket/evals/m",
            env=env,
        )
    )
    assert json.loads(fs.cat("bucket/evals/m/metrics.json"))["examples"] == 30

    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(3000, seed=7))]
    for k in range(3):  # 60 blocks of 50 rows: a kill after the first few leaves most to do
        fs.pipe(
            f"bucket/corpus/part{k}.jsonl",
            "".join(json.dumps(r) + "\n" for r in rows[k * 1000 : (k + 1) * 1000]).encode(),
        )
    fs.pipe("bucket/corpus/README.txt", b"not matched by the glob")
    cmd = [
        "model_dir=gs://bucket/models/m",
        "input=gs://bucket/corpus/*.jsonl",
        "output=gs://bucket/preds/",
        "block_rows=50",
    ]

    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "infer", *cmd],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 240
            while len(fs.glob("bucket/preds/_done/*.json")) < 3:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            kill_9_job(proc)
    quiet(log.read_text())
    committed = {p.rsplit("/", 1)[-1][: -len(".json")] for p in fs.glob("bucket/preds/_done/*.json")}
    assert 3 <= len(committed) < 60 and not fs.exists("bucket/preds/_SUCCESS"), "killed too late to test a resume"
    before = {name: fs.info(f"bucket/preds/{name}.parquet")["generation"] for name in committed}

    out = quiet(run_cli("infer", *cmd, env=env))
    assert "output: gs://bucket/preds/" in out
    for name, generation in before.items():  # committed shards were not rewritten
        assert fs.info(f"bucket/preds/{name}.parquet")["generation"] == generation, name
    names = {p.rsplit("/", 1)[-1] for p in fs.ls("bucket/preds")}
    assert {"_SUCCESS", "_job.json", "_errors.jsonl"} <= names and not names & {"_done", "_errors"}
    shards = sorted(fs.glob("bucket/preds/part-*.parquet"))
    assert len(shards) == 60 and len(names) == 63
    got = pd.concat([pd.read_parquet(io.BytesIO(fs.cat(p))) for p in shards])
    assert sorted(got.id) == sorted(r["id"] for r in rows)  # every id exactly once
    manifest = json.loads(fs.cat("bucket/preds/_SUCCESS"))
    assert (manifest["files"], manifest["rows"], manifest["predicted"], manifest["shards"]) == (3, 3000, 3000, 60)
    sample = got.sample(30, random_state=0)
    probs = reference(str(tmp_path / "model"), [rows[int(i[1:])]["text"] for i in sample.id])
    assert list(sample.label) == [LABELS[j] for j in probs.argmax(1)]
    np.testing.assert_allclose(sample.score, probs.max(1), atol=1e-5)

    generations = {p: fs.info(p)["generation"] for p in fs.find("bucket/preds")}
    again = quiet(run_cli("infer", *cmd, env=env))
    assert "complete already: 3000 rows predicted" in again
    assert {p: fs.info(p)["generation"] for p in fs.find("bucket/preds")} == generations


def _in_subprocess(code: str, **env) -> str:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_EMULATOR", "FSSPEC_", "GOOGLE_", "GCSFS_"))
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_credentials_come_from_adc_only_and_anonymous_access_only_for_the_emulator(tmp_path):
    code = """
import fsspec
from recipes import storage
from recipes.errors import RecipeError
cls = fsspec.get_filesystem_class("gs")
print(cls.__module__ + "." + cls.__name__, fsspec.config.conf["gs"]["token"], fsspec.config.conf["gcs"]["token"])
try:
    fs, _ = storage.filesystem("gs://bucket/x")
    print("method", fs.credentials.method)
except RecipeError as e:
    print("error", e)
"""
    emulator = _in_subprocess(
        code, STORAGE_EMULATOR_HOST="http://127.0.0.1:1", GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json")
    )
    assert emulator.splitlines() == ["gcsfs.core.GCSFileSystem anon anon", "method anon"]
    secret = "ya29.not-a-real-token"
    real = _in_subprocess(
        code,
        GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"),
        FSSPEC_GCS_TOKEN=secret,
        FSSPEC_GS_TOKEN=secret,
    )
    head, result = real.splitlines()
    assert head == "recipes.storage.GCSFileSystem google_default google_default"  # not the token from the environment
    assert result.startswith("error gs://bucket/x: no Google Cloud credentials (Application Default Credentials)")
    assert secret not in real


def test_bucket_layout_is_asked_once_per_bucket(gcs, caplog):
    """Against real GCS gcsfs asks a bucket's layout (flat, hierarchical, zonal) over gRPC; where that fails it
    warned and retried on every call. The emulator has no gRPC API: the one failure is kept."""
    import gcsfs

    from recipes import storage

    if not hasattr(gcsfs.GCSFileSystem, "_get_bucket_type"):
        pytest.skip("gcsfs without zonal/HNS support (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false): no layout probe")
    env, _ = gcs
    fs = storage.GCSFileSystem(
        endpoint_url=env["STORAGE_EMULATOR_HOST"], token="anon", retry_timeout=1, skip_instance_cache=True
    )
    with caplog.at_level("WARNING", logger="gcsfs"):
        with fs.open("bucket/a/x.txt", "wb") as f:
            f.write(b"x")
        assert fs.cat("bucket/a/x.txt") == b"x" and fs.isdir("bucket/a")
        with fs.open("bucket/a/x.txt", "rb") as f:
            assert f.read() == b"x"
        fs.makedirs("bucket/b", exist_ok=True)
        assert fs.ls("bucket/a") == ["bucket/a/x.txt"]
    assert len([r for r in caplog.records if "bucket type" in r.getMessage()]) == 1


def test_remote_model_is_downloaded_once_and_again_when_replaced(gcs, tmp_path, monkeypatch):
    """Training reads its base model three times (tokenizer, config, weights): one download, unless the bucket's
    objects changed (GCS generations)."""
    from recipes import storage

    _, fs = gcs
    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(storage, "filesystem", lambda url: (fs, url.removeprefix("gs://")))  # the emulator, in-process
    downloads = []
    download = storage.download
    monkeypatch.setattr(storage, "download", lambda url, local: downloads.append(url) or download(url, local))
    fs.pipe({"bucket/m/config.json": b'{"v": 1}', "bucket/m/sub/weights.bin": b"w"})

    first = storage.local_model_dir("gs://bucket/m")
    assert storage.local_model_dir("gs://bucket/m") == first and len(downloads) == 1
    assert (tmp_path / "cache" / "models").is_dir() and sorted(
        p.name for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()
    ) == [os.path.basename(first)]  # no leftover partial copies
    assert sorted(str(p.relative_to(first)) for p in Path(first).rglob("*") if p.is_file()) == [
        "config.json",
        "sub/weights.bin",
    ]

    fs.pipe("bucket/m/config.json", b'{"v": 2}')  # a run replaced the model
    assert storage.local_model_dir("gs://bucket/m") == first and len(downloads) == 2
    assert (Path(first) / "config.json").read_text() == '{"v": 2}'
    assert storage.local_model_dir("gs://bucket/m") == first and len(downloads) == 2
