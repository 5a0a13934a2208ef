"""Bad input ends a run with exit code 2 and one line that says what is wrong, where.

Every case runs `python run.py ...` as a user types it (in this process: run_main); nothing may be left that
looks like a finished run.
"""

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_rows, run_main


def error_line(out, *needles) -> str:
    """The single `error: ...` line of a failed run; checks exit code 2, no traceback, and `needles` in the line."""
    report = f"rc={out.returncode}\nstdout:\n{out.stdout[-2000:]}\nstderr:\n{out.stderr[-3000:]}"
    assert out.returncode == 2, report
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, report
    lines = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, report
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_finished(run: Path) -> None:
    assert not (run / "model").exists()
    assert not (run / "metrics.json").exists()
    assert not (run / "predictions.jsonl").exists()
    assert not list(run.glob("checkpoints/step_*.pt"))


def override(args, key, value):
    """train_args with `key` set to `value` (the last occurrence of a key wins in Hydra, but be explicit)."""
    return [a for a in args if not a.startswith(f"{key}=")] + [f"{key}={value}"]


def write_rows(path: Path, rows) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


# ---- training


def test_missing_train_file(train_args, tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    out = run_main("train", *override(train_args, "data.train", missing))
    error_line(out, str(missing), "not found")
    assert_nothing_finished(tmp_path / "run")


def test_unknown_format(train_args, tiny_data, tmp_path):
    xlsx = tmp_path / "train.xlsx"
    xlsx.write_bytes(Path(tiny_data["train"]).read_bytes())
    out = run_main("train", *override(train_args, "data.train", xlsx))
    error_line(out, "train.xlsx", "format")
    assert_nothing_finished(tmp_path / "run")


def test_missing_column(train_args, tiny_data, tmp_path):
    out = run_main("train", *train_args, "data.text_column=body")
    line = error_line(out, tiny_data["train"], "'body'", "data.text_column")
    assert "text" in line and "label" in line  # the columns that are there
    assert_nothing_finished(tmp_path / "run")


def test_empty_text_names_row(train_args, tmp_path):
    rows = make_rows(120, 0)
    rows[6]["text"] = "  "  # data row 7 (line 8 of the file, after the header)
    path = write_rows(tmp_path / "bad_train.csv", rows)
    out = run_main("train", *override(train_args, "data.train", path))
    error_line(out, "bad_train.csv", "row 7", "empty text")
    assert_nothing_finished(tmp_path / "run")


def test_single_class(train_args, tmp_path):
    rows = [{**r, "label": "billing"} for r in make_rows(60, 0)]
    path = write_rows(tmp_path / "one_class.csv", rows)
    out = run_main("train", *override(train_args, "data.train", path))
    error_line(out, "one_class.csv", "billing", "one label")
    assert_nothing_finished(tmp_path / "run")


def test_not_utf8(train_args, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\nmy invoice is wrong,billing\ncaf\xff crash again,technical\nparcel lost,shipping\n")
    out = run_main("train", *override(train_args, "data.train", path))
    error_line(out, "latin1.csv", "line 3", "UTF-8")
    assert_nothing_finished(tmp_path / "run")


def test_missing_model_path(train_args, tmp_path):
    out = run_main("train", *override(train_args, "model.name_or_path", "/nonexistent/model"))
    error_line(out, "/nonexistent/model")
    assert_nothing_finished(tmp_path / "run")


def test_unwritable_output_dir(train_args, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / "run"
    out = run_main("train", *override(train_args, "output_dir", target))
    error_line(out, str(target), "output_dir")
    assert blocker.read_text() == "not a directory"


def test_unknown_config_key(train_args, tmp_path):
    error_line(
        run_main("train", *train_args, "trainer.lernrate=1"), "trainer.lernrate", "unknown key", "keys of trainer"
    )
    assert not (tmp_path / "run").exists()  # rejected before the recipe starts


def test_wrong_type(train_args, tmp_path):
    error_line(
        run_main("train", *train_args, "trainer.batch_size=abc"), "trainer.batch_size='abc'", "expected an integer"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting", ["trainer.batch_size=0", "trainer.grad_accum_steps=0", "model.dropout=1.5"])
def test_out_of_range_settings(train_args, tmp_path, setting):
    out = run_main("train", *train_args, setting)
    error_line(out, setting.split("=")[0].split(".")[1])
    assert_nothing_finished(tmp_path / "run")


# ---- evaluation


def test_unseen_label_at_evaluation(train_args, tiny_data, tmp_path):
    out = run_main("train", *train_args, "trainer.epochs=1")
    assert out.returncode == 0, out.stderr[-3000:]
    model = tmp_path / "run" / "model"
    assert (model / "config.json").exists()

    rows = make_rows(12, 5)
    rows[8]["label"] = "returns"  # data row 9
    test = write_rows(tmp_path / "new_labels.csv", rows)
    out = run_main(
        "evaluate", f"checkpoint={model}", "data=files", f"data.train={tiny_data['train']}", f"data.test={test}"
    )
    error_line(out, "new_labels.csv", "row 9", "'returns'")
    # evaluate writes to <run>/eval-<data>-<split>-<hash of the data config>: nothing finished there, or anywhere in
    # the run
    assert not [
        p.relative_to(tmp_path)
        for p in (tmp_path / "run").glob("eval-*/*")
        if p.name in ("metrics.json", "predictions.jsonl")
    ]


def test_missing_checkpoint(tiny_data, tmp_path):
    missing = tmp_path / "run" / "model"
    out = run_main(
        "evaluate",
        f"checkpoint={missing}",
        "data=files",
        f"data.train={tiny_data['train']}",
        f"data.test={tiny_data['test']}",
    )
    error_line(out, str(missing))
    assert not (tmp_path / "run").exists()


def test_checkpoint_that_is_not_a_trained_model(tiny_model, tiny_data, tmp_path):
    # a pretrained encoder directory (no classification head, no problem_type) instead of run_dir/model
    out = run_main(
        "evaluate",
        f"checkpoint={tiny_model}",
        "data=files",
        f"data.train={tiny_data['train']}",
        f"data.test={tiny_data['test']}",
        f"output_dir={tmp_path / 'eval'}",
    )
    error_line(out, tiny_model, "not a model trained by text-recipes")
    assert_nothing_finished(tmp_path / "eval")
