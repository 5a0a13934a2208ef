"""A table of bad inputs: each one mistyped value, each refused the same way.

"A user who mistypes one value must get one line that names the key, file or value and says what
is allowed, before any work starts, with a non-zero exit, and nothing on disk changed."

Every case in CASES runs the command a user types (`python run.py train|evaluate ...` or
`torchx run --dryrun ...`), in this process (the process boundary is what test_bad_input_in_its_own_process
covers, for a few of them), and checks:
  1. the exit status (2 for run.py; torchx's CLI owns its own, so non-zero there),
  2. no Traceback on stdout or stderr,
  3. run.py: exactly one stderr line starting with "error:" and no Hydra dump (full_key:, object_type=,
     HYDRA_FULL_ERROR); torchx: at most 2 lines that are not torchx's own "torchx ..." log lines,
  4. the error line names the offending key, file or value (the case's needles),
  5. no file or directory created, removed or changed under the test's tmp dir, the tiny model, the
     shared finished run, or the repository, its sources and conf/ included (so a config error does not
     even create output_dir).

Cases that should be accepted are separate tests at the end of the file, as is the kill -9 test of
evaluate's outputs (written under a temporary name, then renamed).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd
import pytest

from tests.conftest import ROOT, make_rows, run_cli, run_main, run_torchx

DRYRUN = ("run", "--dryrun", "-s", "local_cwd")
TORCHX_DRYRUN = [sys.executable, "-m", "torchx.cli.main", *DRYRUN]
SECRET = "hunter2-secret"
HYDRA_DUMP = ("full_key:", "object_type=", "reference_type=", "HYDRA_FULL_ERROR", "Error executing job")
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache"}
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"

Needle = Union[str, Tuple[str, ...]]  # a string that must be in the error line, or a tuple of alternatives


# ---------------------------------------------------------------- helpers


def key_of(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def override(args: Sequence[str], *settings: str) -> List[str]:
    """`args` with each `key=value` of `settings` replacing any earlier setting of the same key."""
    keys = {key_of(s) for s in settings}
    return [a for a in args if key_of(a) not in keys] + list(settings)


def without(args: Sequence[str], *keys: str) -> List[str]:
    return [a for a in args if key_of(a) not in keys]


def snapshot(*roots) -> Dict[str, object]:
    """(size, mtime_ns) of every file and the existence of every directory under `roots`.

    The repository's own sources (an edit by whoever runs the tests) are told apart by content, not mtime."""
    state: Dict[str, object] = {}
    for root in dict.fromkeys(str(r) for r in roots):
        if not os.path.exists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            state[dirpath + os.sep] = "dir"
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                state[path] = (st.st_size, st.st_mtime_ns)
    return state


def others_run(path: str, before: Dict[str, object]) -> bool:
    """Inside a run directory that was already in the repository's outputs/ (a benchmark or run someone else is
    running now). A case that wrote there would first create outputs/<run>/, which is still reported."""
    outputs = os.path.join(str(ROOT), "outputs") + os.sep
    if not path.startswith(outputs):
        return False
    top = path[len(outputs) :].split(os.sep)[0]
    return bool(top) and outputs + top + os.sep in before and path != outputs + top + os.sep


def diff(before: Dict[str, object], after: Dict[str, object], owned: Sequence[str] = ()) -> List[str]:
    changes = []
    for path in sorted(set(before) | set(after)):
        if any(path.startswith(str(o)) for o in owned) or others_run(path, before):
            continue
        if path not in before:
            changes.append(f"created {path}")
        elif path not in after:
            changes.append(f"removed {path}")
        elif before[path] != after[path]:
            changes.append(f"changed {path}")
    return changes


def report(out: subprocess.CompletedProcess) -> str:
    return f"rc={out.returncode}\n--- stdout:\n{out.stdout[-2500:]}\n--- stderr:\n{out.stderr[-4000:]}"


def error_text(kind: str, out: subprocess.CompletedProcess) -> str:
    """The error line(s) a user sees, after checking their shape."""
    both = out.stdout + out.stderr
    assert "Traceback" not in both, report(out)
    if kind == "torchx":  # torchx logs "torchx <date> INFO ..." lines; the error is the rest
        lines = [l for l in both.splitlines() if l.strip() and not l.startswith("torchx ")]
        assert 1 <= len(lines) <= 2, report(out)
        return "\n".join(lines)
    for marker in HYDRA_DUMP:
        assert marker not in out.stderr, report(out)
    lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, report(out)
    return lines[0]


def check_needles(text: str, needles: Sequence[Needle], out) -> None:
    for needle in needles:
        alternatives = needle if isinstance(needle, tuple) else (needle,)
        assert any(a in text for a in alternatives), f"none of {alternatives!r} in {text!r}\n{report(out)}"


def write_csv(path: Path, rows) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def write_jsonl(path: Path, rows) -> str:
    """`rows`: dicts (dumped as JSON) or raw strings (written as the line itself)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def rows(n=24, seed=3, **changes):
    """make_rows with row `i` (0-based index) replaced: changes like r4={"label": None}."""
    out = make_rows(n, seed)
    for name, value in changes.items():
        i = int(name[1:])
        out[i] = {**out[i], **value} if isinstance(value, dict) else value
    return out


def numeric_rows(n=24, seed=3):
    return [{"text": r["text"], "label": i % 2} for i, r in enumerate(make_rows(n, seed))]


def complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_START) and data.endswith(PNG_END)


# ---------------------------------------------------------------- shared fixtures


def tiny_train_args(model: str, data: Dict[str, str], output_dir: Path) -> List[str]:
    return [
        "model.name=tiny",
        f"model.name_or_path={model}",
        "model.max_length=32",
        "data=files",
        f"data.train={data['train']}",
        f"data.validation={data['validation']}",
        f"data.test={data['test']}",
        "trainer.max_steps=2",
        "trainer.batch_size=16",
        "trainer.precision=fp32",
        "optim.warmup_fraction=0",
        "optim.lr=5e-3",
        f"output_dir={output_dir}",
    ]


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    """One finished 2-step training run that cases read (evaluate its model, relaunch it) but must not change."""
    base = tmp_path_factory.mktemp("finished")
    data = {}
    for split, n, seed in (("train", 120, 0), ("validation", 30, 1), ("test", 30, 2)):
        data[split] = write_csv(base / f"{split}.csv", make_rows(n, seed))
    run = base / "run"
    args = tiny_train_args(tiny_model, data, run)
    out = run_main("train", *args)
    assert out.returncode == 0, report(out)
    assert (run / "model" / "config.json").exists() and (run / "metrics.json").exists()
    return SimpleNamespace(base=base, dir=run, model=str(run / "model"), args=args, **data)


# ---------------------------------------------------------------- the table


@dataclass
class Ctx:
    tmp: Path
    model: str  # the tiny pretrained encoder (fixture)
    data: Dict[str, str]  # tiny_data
    train_args: List[str]  # train_args + trainer.max_steps=1
    finished: SimpleNamespace
    vars: Dict[str, str] = field(default_factory=dict)  # set by builders, for needles

    def train(self, *settings: str) -> List[str]:
        return override(self.train_args, *settings)

    def evaluate(self, *settings: str) -> List[str]:
        base = [
            f"checkpoint={self.finished.model}",
            "data=files",
            f"data.train={self.finished.train}",
            f"data.test={self.finished.test}",
            f"output_dir={self.tmp / 'eval'}",
        ]
        return override(base, *settings)

    def fmt(self, needle: Needle) -> Needle:
        names = {"tmp": str(self.tmp), "model": self.model, "finished": str(self.finished.dir), **self.vars}
        if isinstance(needle, tuple):
            return tuple(n.format(**names) for n in needle)
        return needle.format(**names)


@dataclass
class Case:
    id: str
    kind: str  # train | evaluate | cli (python run.py ARGS) | torchx (torchx run --dryrun -s local_cwd ARGS)
    build: Callable[[Ctx], List[str]]
    needles: Tuple[Needle, ...]
    rc: Optional[int] = 2  # None: any non-zero exit
    env: Dict[str, str] = field(default_factory=dict)
    owned: Tuple[str, ...] = ()  # paths (templates) the run may change
    secret: Optional[str] = None  # must not be echoed back
    skip: Optional[str] = None  # "cuda" / "torch_xla": skip where that is available


def T(*settings):
    return lambda c: c.train(*settings)


def E(*settings):
    return lambda c: c.evaluate(*settings)


def X(*args):
    return lambda c: list(args)


def train_case(id, needles, *settings, **kw):
    return Case(id, "train", T(*settings), tuple(needles), **kw)


def config(setting, needle=None, *more, **kw):
    """A one-setting config case: the key itself is the needle."""
    return train_case(
        f"config-{' '.join(more) + ' ' if more else ''}{setting}", [needle or key_of(setting)], *more, setting, **kw
    )


def data_file(id, name, write, needles, split="train", settings=(), drop=()):
    """A case whose data.<split> is a file written by write(path)."""

    def build(c: Ctx):
        path = c.tmp / name
        write(path)
        return without(c.train(f"data.{split}={path}", *settings), *drop)

    return Case(f"data-{id}", "train", build, tuple(needles))


def raw(content: Union[str, bytes]):
    return lambda p: p.write_bytes(content if isinstance(content, bytes) else content.encode())


def csv_rows(rs):
    return lambda p: write_csv(p, rs)


def jsonl_rows(rs):
    return lambda p: write_jsonl(p, rs)


def parquet_rows(rs):
    return lambda p: pd.DataFrame(rs).to_parquet(p)


CSV = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in make_rows(24, 3))
ROW5 = ("row 5", "line 5")  # jsonl: row n is line n


def model_dir(id, make, needles, settings=()):
    def build(c: Ctx):
        path = c.tmp / id
        make(c, path)
        return c.train(f"model.name_or_path={path}", *settings)

    return Case(f"model-{id}", "train", build, tuple(needles))


def _no_weights(c, path):
    path.mkdir()
    for f in Path(c.model).iterdir():
        if f.name == "config.json" or f.name.startswith("tokenizer"):
            shutil.copy(f, path / f.name)


def _truncated_weights(c, path):
    shutil.copytree(c.model, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _bad_config_json(c, path):
    shutil.copytree(c.model, path)
    (path / "config.json").write_text('{"model_type": "bert", "hidden_size": ')


def _unknown_model_type(c, path):
    shutil.copytree(c.model, path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "banana"}))


def _file_not_dir(c, path):
    path.write_text("not a model")


def truncated_checkpoint(c: Ctx) -> List[str]:
    """A run killed after its step-1 checkpoint (no model/, no metrics.json), whose checkpoint was then
    truncated on disk: relaunching the same command must name the file, not resume or crash."""
    args = c.train("trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_checkpoints=2")
    out = run_main("train", *args)
    assert out.returncode == 0, report(out)
    run = c.tmp / "run"
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 2, ckpts
    ckpts[-1].unlink()
    for name in ("metrics.json", "training_curve.png"):
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "model", ignore_errors=True)
    ckpts[0].write_bytes(ckpts[0].read_bytes()[:100])
    c.vars["ckpt"] = ckpts[0].name
    return args


def eval_case(id, needles, *settings, **kw):
    return Case(f"evaluate-{id}", "evaluate", E(*settings), tuple(needles), **kw)


def torchx_train(id, needles, *args, **kw):
    return Case(f"torchx-train-{id}", "torchx", X("components/train.py:train", *args), tuple(needles), rc=None, **kw)


def torchx_eval(id, needles, *args, **kw):
    return Case(
        f"torchx-evaluate-{id}",
        "torchx",
        X("components/evaluate.py:evaluate", "--checkpoint", "outputs/x/model", *args),
        tuple(needles),
        rc=None,
        **kw,
    )


def _existing_file(c: Ctx, name="a_file") -> Path:
    p = c.tmp / name
    p.write_text("not a directory")
    return p


def _not_a_run(c: Ctx) -> Path:
    d = c.tmp / "notarun"
    d.mkdir()
    (d / "thesis-draft.txt").write_text("precious")
    return d


CASES: List[Case] = [
    # ---- config values that were silently accepted
    config("model.max_length=512", "model.max_length"),  # the tiny model has 128 positions
    config("model.max_length=-1"),
    config("model.dropout=-0.1"),
    config("model.attn_implementation=banana"),
    config("model.name_or_path=''", "model.name_or_path"),
    config("optim.lr=0"),
    config("optim.lr=-1e-4", "optim.lr"),
    config("optim.warmup_fraction=-0.1"),
    config("optim.warmup_fraction=1.0"),
    config("optim.betas=[0.9]", "optim.betas"),
    config("optim.betas=[0.9,1.5]", "optim.betas"),
    config("optim.eps=0"),
    config("optim.weight_decay=-0.01"),
    config("optim.scheduler=banana"),
    config("optim.scheduler=reduce_lr_on_plateau", "optim.scheduler"),  # steps on a metric
    config("optim.scheduler=cosine_with_min_lr", "optim.scheduler"),  # needs min_lr
    config("optim.scheduler=cosine_warmup_with_min_lr", "optim.scheduler"),
    config("optim.scheduler=warmup_stable_decay", "optim.scheduler"),  # needs decay steps
    config("optim.scheduler=greedy", "optim.scheduler"),  # GreedyLR.step(metrics)
    config("trainer.max_steps=0"),
    config("trainer.max_steps=-2"),
    config("trainer.epochs=0", "trainer.epochs", "trainer.max_steps=-1"),
    config("trainer.group_size=0"),
    config("trainer.group_size=-1"),
    config("trainer.max_grad_norm=-1"),
    config("trainer.eval_every=-1"),
    config("trainer.save_every=-1"),
    config("trainer.keep_checkpoints=0"),
    config("trainer.log_every=0"),
    config("trainer.early_stopping_patience=-1"),
    config("trainer.eval_batch_size=0"),
    config("trainer.seed=-1"),
    config("trainer.seed=4294967296", "trainer.seed"),
    config("optim.lr=inf", "optim.lr"),
    config("optim.weight_decay=nan", "optim.weight_decay"),
    config("optim.betas=[0.9,nan]", "optim.betas[1]"),
    config("trainer.precision=fp16"),
    config("trainer.device=tpu", skip="torch_xla"),
    config("trainer.device=cuda", skip="cuda"),
    config("trainer.device=banana"),
    config("task.type=regression"),
    config("task.metric=auc"),
    config("task.threshold=7", "task.threshold", "task=multi_label"),
    config("data.format=xlsx"),
    config("data.split_seed=-1"),
    config("data.split=[1.2,-0.1,-0.1]", "data.split"),
    config("data.split=[0.8,0.2]", "data.split"),
    # train and validation are files, so an explicit split must give them 0
    config("data.split=[0.7,0.15,0.15]", "data.split"),
    Case(
        "config-data.split=[0.5,0.2,0.1] (train only)",
        "train",
        lambda c: without(c.train("data.split=[0.5,0.2,0.1]"), "data.validation", "data.test"),
        ("data.split",),
    ),
    config("data.column_names=[text,text]", "data.column_names", "data.header=false"),
    config("data.text_column=''", "data.text_column"),
    config("data.label_column=text", "data.label_column"),
    config("data.text_pair_column=text", "data.text_pair_column"),
    config("data.label_delimiter=''", "data.label_delimiter"),
    Case("config-data=files without data.train", "train", lambda c: without(c.train(), "data.train"), ("data.train",)),
    Case(
        "config-data=hub without data.hub_id",
        "train",
        lambda c: without(c.train("data=hub"), "data.train", "data.validation", "data.test"),
        ("data.hub_id",),
    ),
    config(
        "model=banana",
        ("model=banana", "banana"),
    ),
    config("output_dir=''", "output_dir"),
    # ---- unknown keys and wrong types: one line naming the key and what is allowed
    config("trainer.lernrate=1", "trainer.lernrate"),
    train_case("config-trainer.lernrate=1 lists keys", ["trainer.lernrate", "max_steps"], "trainer.lernrate=1"),
    config("+trainer.foo=1", "trainer.foo"),
    config("+foo=1", "foo"),
    config("+model.bar=x", "model.bar"),
    config("++trainer.foo=1", "trainer.foo"),
    train_case(
        "config-trainer.batch_size=abc", ["trainer.batch_size", ("int", "whole number")], "trainer.batch_size=abc"
    ),
    train_case("config-trainer.epochs=1.5", ["trainer.epochs", ("int", "whole number")], "trainer.epochs=1.5"),
    train_case("config-optim.lr=fast", ["optim.lr", ("number", "float")], "optim.lr=fast"),
    train_case(
        "config-trainer.group_by_length=maybe",
        ["trainer.group_by_length", ("true", "bool")],
        "trainer.group_by_length=maybe",
    ),
    Case("cli-override without =", "train", lambda c: c.train() + ["trainer.max_steps"], ("trainer.max_steps",)),
    Case("cli-unknown command", "cli", X("trian", "trainer.max_steps=1"), ("trian",)),
    Case("cli---resolve without --cfg job", "train", lambda c: c.train() + ["--resolve"], ("--resolve",)),
    # ---- data files
    data_file(
        "jsonl label 0.5",
        "half.jsonl",
        jsonl_rows([*numeric_rows()[:4], {"text": "hello there", "label": 0.5}, *numeric_rows()[5:]]),
        ["half.jsonl", ROW5],
        drop=("data.validation", "data.test"),
    ),
    data_file(
        "jsonl dict label", "dictlabel.jsonl", jsonl_rows(rows(r4={"label": {"a": 1}})), ["dictlabel.jsonl", ROW5]
    ),
    data_file(
        "jsonl list label single_label",
        "listlabel.jsonl",
        jsonl_rows(rows(r4={"label": ["billing", "shipping"]})),
        ["listlabel.jsonl", ROW5],
    ),
    data_file("jsonl null label", "nulllabel.jsonl", jsonl_rows(rows(r4={"label": None})), ["nulllabel.jsonl", ROW5]),
    data_file("jsonl empty text", "emptytext.jsonl", jsonl_rows(rows(r4={"text": ""})), ["emptytext.jsonl", ROW5]),
    data_file(
        "jsonl missing text key", "notext.jsonl", jsonl_rows(rows(r4='{"label": "billing"}')), ["notext.jsonl", ROW5]
    ),
    data_file("jsonl scalar line", "scalar.jsonl", jsonl_rows(rows(r4="3")), ["scalar.jsonl", ROW5]),
    data_file("jsonl list line", "listline.jsonl", jsonl_rows(rows(r4="[1, 2]")), ["listline.jsonl", ROW5]),
    data_file(
        "jsonl invalid JSON", "broken.jsonl", jsonl_rows(rows(r4='{"text": "abc", "label": ')), ["broken.jsonl", ROW5]
    ),
    data_file(
        "jsonl column_names given",
        "train.jsonl",
        jsonl_rows(rows()),
        ["data.column_names"],
        settings=("data.column_names=[text,label]",),
    ),
    data_file(
        "csv forced as jsonl",
        "really.csv",
        csv_rows(rows()),
        ["really.csv", ("line 1", "row 1")],
        settings=("data.format=jsonl",),
    ),
    data_file(
        "header=false on a file with a header",
        "withheader.csv",
        csv_rows(rows()),
        ["withheader.csv", "row 1"],
        settings=("data.header=false", "data.column_names=[text,label]"),
    ),
    data_file(
        "header=false without column_names",
        "noheader.csv",
        raw(CSV.split("\n", 1)[1]),
        ["data.column_names"],
        settings=("data.header=false",),
    ),
    data_file(
        "column_names: 3 names for 2 columns",
        "noheader.csv",
        raw(CSV.split("\n", 1)[1]),
        ["noheader.csv", ("data.column_names", "text, label, extra", "[text, label, extra]")],
        settings=("data.header=false", "data.column_names=[text,label,extra]"),
    ),
    data_file(
        "column_names: 1 name for 2 columns",
        "noheader.csv",
        raw(CSV.split("\n", 1)[1]),
        ["noheader.csv", ("data.column_names", "(text)", "[text]")],
        settings=("data.header=false", "data.column_names=[text]"),
    ),
    data_file(
        "csv duplicate header",
        "dupcols.csv",
        raw("text,text,label\n" + "".join(f"{r['text']},{r['text']},{r['label']}\n" for r in make_rows(24, 3))),
        ["dupcols.csv", ("duplicate", "twice", "more than once", "repeated")],
    ),
    data_file(
        "csv row with too many fields",
        "wide.csv",
        raw("\n".join(l + (",extra" if i == 5 else "") for i, l in enumerate(CSV.split("\n")))),
        ["wide.csv", ("row 5", "line 6")],
    ),
    data_file(
        "tsv row with too many fields",
        "wide.tsv",
        raw("\n".join(l.replace(",", "\t") + ("\textra" if i == 5 else "") for i, l in enumerate(CSV.split("\n")))),
        ["wide.tsv", ("row 5", "line 6")],
    ),
    data_file(
        "csv unterminated quote",
        "openquote.csv",
        raw("\n".join(('"' + l if i == 3 else l) for i, l in enumerate(CSV.split("\n")))),
        ["openquote.csv", ("row 3", "line 4")],
    ),
    data_file("csv empty text row", "blank.csv", csv_rows(rows(r4={"text": "   "})), ["blank.csv", "row 5"]),
    data_file(
        "csv missing label column",
        "nolabel.csv",
        csv_rows([{"text": r["text"], "tag": r["label"]} for r in rows()]),
        ["nolabel.csv", "label"],
    ),
    data_file(
        "csv missing text_pair column",
        "nopair.csv",
        csv_rows(rows()),
        ["nopair.csv", "sentence2"],
        settings=("data.text_pair_column=sentence2",),
    ),
    data_file("csv empty file", "empty.csv", raw(b""), ["empty.csv"]),
    data_file("csv header only", "headeronly.csv", raw("text,label\n"), ["headeronly.csv"]),
    data_file(
        "not UTF-8",
        "latin1.csv",
        raw(b"text,label\nmy invoice is wrong,billing\ncaf\xe9 crash again,technical\n"),
        ["latin1.csv", ("line 3", "row 2")],
    ),
    data_file(
        "not UTF-8 in validation",
        "latin1-val.csv",
        raw(b"text,label\nparcel lost,shipping\nscreen \xff crash,technical\n"),
        ["latin1-val.csv", ("line 3", "row 2")],
        split="validation",
    ),
    data_file(
        "validation label unseen in train",
        "newlabel-val.csv",
        csv_rows(rows(10, 4, r1={"label": "returns"})),
        ["newlabel-val.csv", "returns"],
        split="validation",
    ),
    data_file(".gz that is not gzip", "plain.csv.gz", raw(CSV), ["plain.csv.gz"]),
    data_file(".parquet that is not parquet", "fake.parquet", raw(CSV), ["fake.parquet"]),
    data_file(
        "parquet null text", "nulltext.parquet", parquet_rows(rows(r1={"text": None})), ["nulltext.parquet", "row 2"]
    ),
    data_file(".txt extension", "train.txt", raw(CSV), ["train.txt"]),
    Case(
        "data-directory as data.train",
        "train",
        lambda c: (c.tmp.joinpath("adir").mkdir(), c.train(f"data.train={c.tmp / 'adir'}"))[1],
        ("{tmp}/adir",),
    ),
    train_case("data-missing validation file", ["{tmp}/missing-val.csv"], "data.validation={tmp}/missing-val.csv"),
    train_case("data-unknown URL scheme", ["foo://bucket/x.csv"], "data.train=foo://bucket/x.csv"),
    Case(
        "data-data=sst2 without the shared data",
        "train",
        lambda c: without(c.train("data=sst2"), "data.train", "data.validation", "data.test"),
        ("nodata/sst2",),
        env={"TEXT_RECIPES_DATA": "/nonexistent/nodata"},
    ),
    Case(
        "data-data=hub offline",
        "train",
        lambda c: without(
            c.train("data=hub", "data.hub_id=someorg/someset"), "data.train", "data.validation", "data.test"
        ),
        ("someorg/someset",),
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    ),
    # ---- models and checkpoints
    train_case("model-missing directory", ["/nonexistent/model-x"], "model.name_or_path=/nonexistent/model-x"),
    model_dir("noweights", _no_weights, ["{tmp}/noweights"]),
    model_dir("truncated", _truncated_weights, ["{tmp}/truncated"]),
    model_dir("badconfig", _bad_config_json, ["{tmp}/badconfig"]),
    model_dir("unknowntype", _unknown_model_type, ["{tmp}/unknowntype"]),
    model_dir("afile", _file_not_dir, ["{tmp}/afile"]),
    model_dir(
        "notokenizer",
        lambda c, path: (
            shutil.copytree(c.model, path),
            [f.unlink() for f in path.iterdir() if f.name.startswith(("tokenizer", "vocab", "special"))],
        ),
        ["{tmp}/notokenizer", "tokenizer"],
    ),
    Case(
        "model-Hub id offline",
        "train",
        T("model=hub", "model.name_or_path=someorg/somemodel"),
        ("someorg/somemodel",),
        env={"HF_HUB_OFFLINE": "1"},
    ),
    Case("checkpoint-truncated step_*.pt", "train", truncated_checkpoint, ("{ckpt}",)),
    # ---- output directories
    Case(
        "output-existing regular file", "train", lambda c: c.train(f"output_dir={_existing_file(c)}"), ("{tmp}/a_file",)
    ),
    Case(
        "output-under a regular file",
        "train",
        lambda c: c.train(f"output_dir={_existing_file(c)}/run"),
        ("{tmp}/a_file",),
    ),
    Case(
        "output-non-empty dir that is not a run",
        "train",
        lambda c: c.train(f"output_dir={_not_a_run(c)}"),
        ("{tmp}/notarun",),
    ),
    train_case("output-unknown URL scheme", ["foo://bucket/run"], "output_dir=foo://bucket/run"),
    Case(
        "output-finished run, optim.lr changed",
        "train",
        lambda c: override(c.finished.args, "optim.lr=1e-3"),
        ("optim.lr",),
    ),
    Case(
        "output-finished run, data.train changed",
        "train",
        lambda c: override(c.finished.args, f"data.train={c.data['train']}"),
        ("data.train",),
    ),
    Case(
        "output-finished run, model.max_length changed",
        "train",
        lambda c: override(c.finished.args, "model.max_length=16"),
        ("model.max_length",),
    ),
    # ---- evaluate
    eval_case("batch_size=0", ["batch_size"], "batch_size=0"),
    eval_case("batch_size=-1", ["batch_size"], "batch_size=-1"),
    eval_case("split=dev", ["split", "dev"], "split=dev"),
    eval_case("precision=fp16", ["precision"], "precision=fp16"),
    eval_case("precision=auto", ["precision", "at fp32 unless told otherwise"], "precision=auto"),
    eval_case("engine=auto", ["engine", "torch, onnx"], "engine=auto"),
    eval_case("device=tpu", ["device"], "device=tpu", skip="torch_xla"),
    eval_case("device=cuda", ["device"], "device=cuda", skip="cuda"),
    eval_case("device=banana", ["device"], "device=banana"),
    eval_case("lernrate=1", ["lernrate"], "lernrate=1"),
    eval_case("+foo=1", ["foo"], "+foo=1"),
    eval_case("data.split=[0.5,0.2,0.1]", ["data.split"], "data.split=[0.5,0.2,0.1]"),
    eval_case("checkpoint=''", ["checkpoint"], "checkpoint=''"),
    eval_case("checkpoint missing", ["{tmp}/missing-run/model"], "checkpoint={tmp}/missing-run/model"),
    Case(
        "evaluate-checkpoint is a pretrained encoder",
        "evaluate",
        lambda c: c.evaluate(f"checkpoint={c.model}"),
        ("{model}",),
    ),
    Case(
        "evaluate-checkpoint is a step_*.pt file",
        "evaluate",
        lambda c: c.evaluate(f"checkpoint={sorted(c.finished.dir.glob('checkpoints/step_*.pt'))[-1]}"),
        ("checkpoints/step_",),
    ),
    Case(
        "evaluate-checkpoint with truncated weights",
        "evaluate",
        lambda c: (
            shutil.copytree(c.finished.model, c.tmp / "broken-model"),
            (c.tmp / "broken-model" / "model.safetensors").write_bytes(b"\0" * 100),
            c.evaluate(f"checkpoint={c.tmp / 'broken-model'}"),
        )[-1],
        ("{tmp}/broken-model",),
    ),
    eval_case("data.test missing", ["{tmp}/missing-test.csv"], "data.test={tmp}/missing-test.csv"),
    Case(
        "evaluate-unseen label in test",
        "evaluate",
        lambda c: c.evaluate(f"data.test={write_jsonl(c.tmp / 'unseen.jsonl', rows(10, 5, r3={'label': 'returns'}))}"),
        ("unseen.jsonl", "returns"),
    ),
    Case(
        "evaluate-no test split (data.split gives it 0)",
        "evaluate",
        lambda c: without(c.evaluate("data.split=[1.0,0,0]"), "data.test"),
        (("data.test", "data.split"),),
    ),
    eval_case("output_dir=''", ["output_dir"], "output_dir=''"),
    Case(
        "evaluate-output_dir is a regular file",
        "evaluate",
        lambda c: c.evaluate(f"output_dir={_existing_file(c)}"),
        ("{tmp}/a_file",),
    ),
    # ---- torchx components: refused when the AppDef is built (--dryrun)
    torchx_train("--cpu -1", ["cpu"], "--cpu", "-1"),
    torchx_train("--gpu -1", ["gpu"], "--gpu", "-1"),
    torchx_train("--memMB -5", ["memMB"], "--memMB", "-5"),
    torchx_train("--nnodes 0", ["nnodes"], "--nnodes", "0"),
    torchx_train("--nproc_per_node 0", ["nproc_per_node"], "--nproc_per_node", "0"),
    torchx_train("--rdzv_port 70000", ["rdzv_port"], "--rdzv_port", "70000"),
    torchx_train("--max_retries -1", ["max_retries"], "--max_retries", "-1"),
    torchx_train("--h banana", ["banana"], "--h", "banana"),
    torchx_train("--name 'My Job!'", ["My Job!"], "--name", "My Job!"),
    *[
        torchx_train(f"--env {key}", [key], "--env", f"{key}={SECRET}", secret=SECRET)
        for key in (
            "GITHUB_PAT",
            "OPENAI_KEY",
            "HF_AUTH",
            "DB_PASS",
            "HF_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "MY_PASSWORD",
        )
    ],
    torchx_train(
        "--env secret value",
        ["MY_SETTING"],
        "--env",
        "MY_SETTING=hf_abcdefghijklmnopqrstuvwxyz012345",
        secret="hf_abcdefghijklmnopqrstuvwxyz012345",
    ),
    torchx_train("-- trainer.lernrate=1", ["trainer.lernrate"], "--", "trainer.lernrate=1"),
    torchx_train("-- trainer.batch_size=abc", ["trainer.batch_size"], "--", "trainer.batch_size=abc"),
    torchx_train("-- trainer.group_size=0", ["trainer.group_size"], "--", "trainer.group_size=0"),
    torchx_train("-- +foo=1", ["foo"], "--", "+foo=1"),
    torchx_train("-- optim.lr=0", ["optim.lr"], "--", "optim.lr=0"),
    torchx_eval("--split dev", ["split", "dev"], "--split", "dev"),
    torchx_eval("--cpu 0", ["cpu"], "--cpu", "0"),
    torchx_eval("--env HF_TOKEN", ["HF_TOKEN"], "--env", f"HF_TOKEN={SECRET}", secret=SECRET),
    torchx_eval("-- batch_size=0", ["batch_size"], "--", "batch_size=0"),
    torchx_eval("-- lernrate=1", ["lernrate"], "--", "lernrate=1"),
    Case(
        "torchx-evaluate---checkpoint ''",
        "torchx",
        X("components/evaluate.py:evaluate", "--checkpoint", ""),
        ("checkpoint",),
        rc=None,
    ),
]


def _skip(reason: Optional[str]) -> None:
    if reason == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is available here")
    if reason == "torch_xla":
        import importlib.util

        if importlib.util.find_spec("torch_xla") is not None:
            pytest.skip("torch_xla is installed here")


def test_case_ids_are_unique_and_the_table_is_large():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, train_args, tiny_model, tiny_data, tmp_path, finished):
    _skip(case.skip)
    ctx = Ctx(tmp_path, tiny_model, tiny_data, override(train_args, "trainer.max_steps=1"), finished)
    args = case.build(ctx)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    roots = (tmp_path, tiny_model, finished.base, ROOT)
    before = snapshot(*roots)
    if case.kind == "torchx":
        out = run_torchx(*DRYRUN, *args, env=case.env)
    else:
        out = run_main(*([] if case.kind == "cli" else [case.kind]), *args, env=case.env)
    after = snapshot(*roots)
    check_refusal(case, ctx, out, diff(before, after, [ctx.fmt(o) for o in case.owned]))


def check_refusal(case: Case, ctx: Ctx, out, changes: List[str]) -> None:

    if case.rc is None:
        assert out.returncode != 0, report(out)
    else:
        assert out.returncode == case.rc, report(out)
    text = error_text(case.kind, out)
    check_needles(text, [ctx.fmt(n) for n in case.needles], out)
    if case.secret:
        assert case.secret not in out.stdout + out.stderr, report(out)
    assert not changes, "\n".join(changes[:20]) + "\n" + report(out)


# the process boundary: exit status, stderr and the one line as a shell sees them, for one case of each kind
IN_A_PROCESS = [
    "config-trainer.batch_size=abc",
    "data-not UTF-8",
    "evaluate-checkpoint missing",
    "torchx-train---cpu -1",
]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in IN_A_PROCESS], ids=IN_A_PROCESS)
def test_bad_input_in_its_own_process(case: Case, train_args, tiny_model, tiny_data, tmp_path, finished):
    ctx = Ctx(tmp_path, tiny_model, tiny_data, override(train_args, "trainer.max_steps=1"), finished)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.build(ctx)]
    roots = (tmp_path, tiny_model, finished.base, ROOT)
    before = snapshot(*roots)
    if case.kind == "torchx":
        out = subprocess.run(
            [*TORCHX_DRYRUN, *args],
            cwd=ROOT,
            env={**os.environ, **case.env},
            capture_output=True,
            text=True,
            timeout=300,
        )
    else:
        out = run_cli(*([] if case.kind == "cli" else [case.kind]), *args, env=case.env, timeout=300)
    check_refusal(case, ctx, out, diff(before, snapshot(*roots), [ctx.fmt(o) for o in case.owned]))


def test_every_process_case_is_in_the_table():
    assert sorted(IN_A_PROCESS) == sorted(c.id for c in CASES if c.id in IN_A_PROCESS)


# ---------------------------------------------------------------- what must be accepted


def log_lines(out) -> List[str]:
    return (out.stdout + "\n" + out.stderr).splitlines()


def has_number(line: str, n: int) -> bool:
    """`n` as a count in a log line (not part of a timestamp like 18:37:28,120 or a longer number)."""
    return re.search(rf"(?<![\d,.:-]){n}(?![\d,.:])", line) is not None


def test_jsonl_int_and_float_labels_are_the_same_labels(train_args, tmp_path):
    """Labels 1 and 0.0 (and 0 and 1.0) in one JSONL file: labels "0" and "1", never "0.0"/"1.0"."""
    rs = [{"text": r["text"], "label": [1, 0.0, 0, 1.0][i % 4]} for i, r in enumerate(make_rows(40, 3))]
    path = write_jsonl(tmp_path / "mixed.jsonl", rs)
    args = without(override(train_args, f"data.train={path}", "trainer.max_steps=1"), "data.validation", "data.test")
    out = run_main("train", *args)
    assert out.returncode == 0, report(out)
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"0", "1"}, config["id2label"]


def test_train_and_validation_files_use_train_whole(train_args, tiny_data):
    """data.train + data.validation, no data.test: all 120 train rows train (no test part carved off), and the
    log says how many rows each split has and where they came from."""
    out = run_main("train", *without(override(train_args, "trainer.max_steps=1"), "data.test"))
    assert out.returncode == 0, report(out)
    lines = log_lines(out)
    assert any(tiny_data["train"] in l and has_number(l, 120) for l in lines), report(out)
    assert any(tiny_data["validation"] in l and has_number(l, 30) for l in lines), report(out)


def test_train_only_carves_validation_and_test(train_args, tiny_data):
    """Only data.train: the default 70/15/15 applies (84 train, 18 validation rows), logged with their source."""
    out = run_main("train", *without(override(train_args, "trainer.max_steps=1"), "data.validation", "data.test"))
    assert out.returncode == 0, report(out)
    lines = log_lines(out)
    assert any(tiny_data["train"] in l and has_number(l, 84) for l in lines), report(out)
    assert any(has_number(l, 18) and "validation" in l for l in lines), report(out)


def test_relaunch_finished_run_with_same_config_succeeds(finished):
    """The same command again: exit 0, no more steps, config.yaml as it was. (Runs after the table, which
    must have left the finished run untouched.)"""
    config = (finished.dir / "config.yaml").read_bytes()
    steps = json.loads((finished.dir / "metrics.json").read_text())["steps"]
    out = run_main("train", *finished.args)
    assert out.returncode == 0, report(out)
    assert (finished.dir / "config.yaml").read_bytes() == config
    assert json.loads((finished.dir / "metrics.json").read_text())["steps"] == steps


def test_evaluate_accepts_the_run_directory(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished.dir, run)
    out = run_main(
        "evaluate", f"checkpoint={run}", "data=files", f"data.train={finished.train}", f"data.test={finished.test}"
    )
    assert out.returncode == 0, report(out)
    results = list(run.glob("eval-*/metrics.json"))
    assert len(results) == 1, list(run.rglob("*"))
    assert not list(tmp_path.glob("eval-*")), "outputs went next to the run directory instead of into it"
    assert json.loads(results[0].read_text())["examples"] == 30


def test_two_evaluations_with_different_test_files_do_not_overwrite(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished.dir, run)
    other = write_csv(tmp_path / "other_test.csv", make_rows(20, 9))
    base = [f"checkpoint={run / 'model'}", "data=files", f"data.train={finished.train}"]
    out = run_main("evaluate", *base, f"data.test={finished.test}")
    assert out.returncode == 0, report(out)
    first = {p: p.read_bytes() for p in run.glob("eval-*/metrics.json")}
    assert len(first) == 1
    out = run_main("evaluate", *base, f"data.test={other}")
    assert out.returncode == 0, report(out)
    for path, content in first.items():  # never a silent overwrite
        assert path.exists() and path.read_bytes() == content, f"{path} was overwritten\n{report(out)}"
    new = [p for p in run.glob("eval-*/metrics.json") if p not in first]
    assert len(new) == 1 and json.loads(new[0].read_text())["examples"] == 20, report(out)


def test_torchx_env_without_secrets_is_accepted():
    out = run_torchx(
        *DRYRUN,
        "components/train.py:train",
        "--env",
        "TOKENIZERS_PARALLELISM=false,HF_HUB_OFFLINE=1",
        "--",
        "trainer.max_steps=1",
    )
    assert out.returncode == 0, report(out)
    assert "HF_HUB_OFFLINE" in out.stdout + out.stderr


# ---------------------------------------------------------------- kill -9 during evaluate


def _check_complete(out_dir: Path, n_rows: int) -> List[str]:
    """Names of the final-named outputs in out_dir; asserts each is complete."""
    present = []
    for path in sorted(out_dir.iterdir()) if out_dir.exists() else []:
        if path.name.startswith(".") or path.name.endswith(".tmp") or path.is_dir():
            continue  # temporary names may be partial
        present.append(path.name)
        if path.name == "metrics.json":
            assert json.loads(path.read_text())["examples"] == n_rows
        elif path.name == "predictions.jsonl":
            lines = path.read_text().splitlines()
            assert len(lines) == n_rows, f"{path}: {len(lines)} of {n_rows} lines"
            for line in lines:
                json.loads(line)
        elif path.suffix == ".png":
            assert complete_png(path), f"{path}: incomplete PNG ({path.stat().st_size} bytes)"
    return present


@pytest.mark.slow
def test_kill_9_during_evaluate_leaves_only_complete_outputs(finished, tmp_path):
    n = 3000
    big = write_csv(tmp_path / "big_test.csv", make_rows(n, 11))
    base = [f"checkpoint={finished.model}", "data=files", f"data.train={finished.train}", f"data.test={big}"]

    full = tmp_path / "full"
    out = run_cli("evaluate", *base, f"output_dir={full}")
    assert out.returncode == 0, report(out)
    assert {"metrics.json", "predictions.jsonl"} <= set(_check_complete(full, n))

    killed_mid_write = []
    for i in range(3):  # each try kills the moment an output is being written: under its temporary name
        out_dir = tmp_path / f"killed{i}"
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "evaluate", *base, f"output_dir={out_dir}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 300
        writing = []
        while proc.poll() is None and time.time() < deadline and not writing:
            names = [e.name for e in os.scandir(out_dir)] if out_dir.is_dir() else []
            writing = [name for name in names if ".tmp" in name]  # RunDir.write's .<name>.tmp.<suffix>
        if writing and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_write.append(writing[0])
        proc.wait(timeout=60)
        _check_complete(out_dir, n)
        if len(killed_mid_write) == 2:
            break
    assert killed_mid_write, "no try saw an output under its temporary name before evaluate ended: nothing was tested"
