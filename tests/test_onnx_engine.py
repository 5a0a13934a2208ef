"""engine=onnx: the export is checked against torch, cached beside the model under the model's and the exporter's
key, refused when tampered with or when it computes something else; its fp32 logits are torch's, its int8 ones
within the stated tolerance. Each export takes ~20 s on 2 cores: slow tier."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recipes import onnx_engine, storage
from recipes.errors import RecipeError
from tests.conftest import make_rows, run_main
from tests.test_infer import LABELS, THRESHOLDS, error_line, save_classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model directory, key of its export): a pair classifier (token_type_ids in the graph), exported once."""
    model = save_classifier(tmp_path_factory.mktemp("onnx") / "pairs", multi=True, text="title", pair="body")
    key, precision = onnx_engine.prepare(model, model, "multi_label", "fp32")
    return model, key


def export_dir(model: str, key: str):
    return Path(model) / onnx_engine.CACHE_DIR / key


def test_the_export_is_checked_recorded_and_found_again(exported, caplog):
    model, key = exported
    manifest = json.loads((export_dir(model, key) / "export.json").read_text())
    assert manifest["versions"] == onnx_engine.versions() and manifest["model_sha256"] == storage.model_sha256(model)
    assert manifest["check"]["fp32"]["max_abs_diff"] <= onnx_engine.MAX_ABS_DIFF
    assert manifest["check"]["int8"]["correlation"] >= onnx_engine.MIN_CORRELATION
    before = {p.name: p.stat().st_mtime_ns for p in export_dir(model, key).iterdir()}
    with caplog.at_level(logging.INFO, logger="text_recipes"):
        assert onnx_engine.prepare(model, model, "multi_label", "int8") == (key, "int8")
    assert "exporting" not in caplog.text and f"export {key}" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in export_dir(model, key).iterdir()} == before  # a hit: untouched
    # the cache is not the model: batch inference's job fingerprint of the model does not change with it
    without = Path(model).parent / "without-cache"
    shutil.copytree(model, without, ignore=shutil.ignore_patterns(onnx_engine.CACHE_DIR))
    assert storage.model_sha256(str(without)) == storage.model_sha256(model)


def test_fp32_logits_are_torchs_and_int8_within_its_tolerance(exported):
    import torch
    from transformers import AutoTokenizer

    from recipes.infer_predict import load_for_inference, predict_logits

    model, key = exported
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = make_rows(200, seed=7)
    enc = tokenizer([r["text"][:20] for r in rows], [r["text"] for r in rows], truncation=True)
    ids = [np.array(x) for x in enc["input_ids"]]
    types = [np.array(x) for x in enc["token_type_ids"]]
    cpu = torch.device("cpu")
    logits = {}
    for engine, precision in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
        m, _, _ = load_for_inference(model, precision, cpu, engine, key, 1)
        logits[engine, precision] = predict_logits(m, ids, types, 16, 0, cpu, torch.float32)
    base = logits["torch", "fp32"]
    assert np.abs(logits["onnx", "fp32"] - base).max() <= onnx_engine.MAX_ABS_DIFF
    decide = lambda x: 1 / (1 + np.exp(-x)) >= np.array(THRESHOLDS)  # noqa: E731
    assert (decide(logits["onnx", "fp32"]) == decide(base)).all()
    assert np.corrcoef(logits["onnx", "int8"].ravel(), base.ravel())[0, 1] >= onnx_engine.MIN_CORRELATION


def test_a_changed_model_is_exported_again(exported, tmp_path):
    model, key = exported
    retrained = save_classifier(tmp_path / "pairs", multi=True, text="title", pair="body", seed=3)
    shutil.copytree(Path(model) / onnx_engine.CACHE_DIR, Path(retrained) / onnx_engine.CACHE_DIR)
    new_key, _ = onnx_engine.prepare(retrained, retrained, "multi_label", "fp32")
    assert new_key != key and (export_dir(retrained, new_key) / "export.json").is_file()
    manifest = json.loads((export_dir(retrained, new_key) / "export.json").read_text())
    assert manifest["model_sha256"] == storage.model_sha256(retrained) != storage.model_sha256(model)


def test_a_tampered_export_is_refused_in_one_line(exported, tmp_path):
    model, key = exported
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    graph = export_dir(str(copy), key) / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(RecipeError, match="model.onnx: not the file this export wrote"):
        onnx_engine.prepare(str(copy), str(copy), "multi_label", "fp32")
    rows = pd.DataFrame([{"title": "t", "body": r["text"]} for r in make_rows(5, seed=1)])
    rows.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    out = run_main("infer", f"model_dir={copy}", f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'out'}")
    error_line(out, "model.onnx: not the file this export wrote", f"delete {export_dir(str(copy), key)}")
    assert graph.read_bytes() == bytes(data)  # refused, not silently rebuilt


def test_an_export_that_differs_from_torch_is_refused_and_leaves_no_cache(tmp_path, monkeypatch):
    model = save_classifier(tmp_path / "single", multi=False)
    monkeypatch.setattr(onnx_engine, "MAX_ABS_DIFF", 0.0)  # what an export that baked in a length would meet
    with pytest.raises(RecipeError, match=r"its ONNX export differs from torch by .* \(allowed: 0;"):
        onnx_engine.prepare(model, model, "single_label", "fp32")
    assert [p.name for p in (Path(model) / onnx_engine.CACHE_DIR).iterdir() if not p.name.startswith(".")] == []


def test_evaluate_on_onnx_reports_torchs_metrics_and_names_its_engine(exported, tmp_path):
    model, _ = exported
    rows = [
        {"title": r["text"][:20], "body": r["text"], "labels": [LABELS[i % 3]]}
        for r, i in zip(make_rows(40, seed=2), range(40))
    ]
    pd.DataFrame(rows).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    results = {}
    for engine in ("torch", "onnx"):
        out = run_main(
            "evaluate",
            f"checkpoint={model}",
            "data=files",
            f"data.test={tmp_path / 'test.jsonl'}",
            "data.text_column=title",
            "data.text_pair_column=body",
            "data.label_column=labels",
            f"engine={engine}",
            f"output_dir={tmp_path / engine}",
        )
        assert out.returncode == 0, out.stderr[-3000:]
        results[engine] = json.loads((tmp_path / engine / "metrics.json").read_text())
    assert (results["onnx"]["engine"], results["onnx"]["precision"]) == ("onnx", "fp32")
    for key in ("f1_micro", "f1_macro", "accuracy"):
        assert results["onnx"][key] == results["torch"][key], key


def test_precision_auto_runs_int8_only_where_the_models_validation_examples_say_it_keeps_quality(
    train_args, tmp_path, monkeypatch
):
    trained = run_main("train", *train_args, "trainer.max_steps=4")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = tmp_path / "run" / "model"
    sample = json.loads((model / "calibration.json").read_text())
    assert sample["rows"] == len(sample["table"]["texts"]) == len(pd.read_csv(train_args_validation(train_args)))
    copies = [tmp_path / f"model-{i}" for i in range(2)]
    for copy in copies:
        shutil.copytree(model, copy)

    # the tiny validation split is below INT8_MIN_ROWS: too few to show int8 within 0.005, so fp32
    key, precision = onnx_engine.prepare(str(model), str(model), "single_label", "auto")
    calibration = json.loads((export_dir(str(model), key) / "export.json").read_text())["calibration"]
    assert calibration["rows"] == sample["rows"] < onnx_engine.INT8_MIN_ROWS and calibration["metric"] == "accuracy"
    assert not calibration["int8_keeps_quality"] and precision == "fp32"

    monkeypatch.setattr(onnx_engine, "INT8_MIN_ROWS", 1)  # then the metric decides
    key, precision = onnx_engine.prepare(str(copies[0]), str(copies[0]), "single_label", "auto")
    calibration = json.loads((export_dir(str(copies[0]), key) / "export.json").read_text())["calibration"]
    assert calibration["int8_keeps_quality"] == (calibration["int8"] >= calibration["fp32"] - 0.005)
    assert precision == ("int8" if calibration["int8_keeps_quality"] else "fp32")
    monkeypatch.setattr(onnx_engine, "INT8_MAX_LOSS", -1.0)  # no int8 can be 1.0 above fp32
    assert onnx_engine.prepare(str(copies[1]), str(copies[1]), "single_label", "auto")[1] == "fp32"


def train_args_validation(train_args) -> str:
    return next(a.split("=", 1)[1] for a in train_args if a.startswith("data.validation="))
