"""ONNX Runtime for the encoder tasks' forward pass on CPU (engine=onnx): exported once per model, cached beside it,
checked against torch before first use.

Exporter: torch.onnx.export(dynamo=True) with symbolic batch and sequence dimensions. The TorchScript exporter
(dynamo=False) was seen to bake the traced sequence length into the graph (logits off by 2.3 at other lengths);
the check runs batch sizes and lengths other than the traced ones, so such an export is refused.

Cache: <model_dir>/onnx/<key>/, key = sha256 of the model's files and of the torch, onnxscript and onnxruntime
versions (a retrained model or another exporter is another export). It holds model.onnx (fp32), model.int8.onnx
(ORT dynamic quantization, int8 weights per output channel) and export.json, written last (a directory without it
is an interrupted export, done again): the versions, each file's sha256, the check's figures per precision, and
the calibration: the task metric at fp32 and int8 on the validation examples saved with the model at training,
which decides what precision=auto runs. A file whose sha256 is not export.json's is refused, never used or
silently rebuilt.

Measured (docs/benchmarks.md): ORT's fp32 runs MiniLM at torch's rate on CPU (both near the core's fp32 peak in
the GEMMs; fusing attention, LayerNorm and GELU with onnxscript's ORT rewrites or ORT's transformers optimizer
changed nothing), so the gain is int8: as fast as torch's dynamic quantization and nearer fp32.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from recipes import storage
from recipes.errors import RecipeError

log = logging.getLogger("text_recipes")

CACHE_DIR = storage.MODEL_CACHES[0]  # under the model directory; left out of the model's digest
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
MANIFEST = "export.json"
# What the check allows, on its rows. fp32: max |ORT logit - torch logit| (sums in another order: 1e-7 seen on
# MiniLM). int8 rounds weights to 1/127 of each output channel's range and activations per tensor, so its logits
# move with the model's scale: the correlation of its logits with torch fp32's, which an export that computes
# something else (a length baked into the graph) does not keep. What int8 costs in a task's metric is measured,
# not assumed: docs/batch-inference.md.
MAX_ABS_DIFF = 1e-3  # fp32
MIN_CORRELATION = 0.95  # int8
# precision=auto runs int8 only where, on the model's own validation examples saved at training (tasks.CALIBRATION),
# its task metric is at most this much below fp32's: 0.5 points of F1 or accuracy
INT8_MAX_LOSS = 0.005
# ...measured on at least this many: fewer, and one answer int8 changes moves the metric by more than INT8_MAX_LOSS,
# so a sample that small cannot show int8 within it (72 support tickets: int8 tied fp32 there, lost 2 of 72 on test)
INT8_MIN_ROWS = 200
CHECK_SHAPES = ((1, 3), (3, 17), (5, 64), (2, 128))  # (rows, tokens): none is the traced (2, 16)
SEED = 0


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def versions() -> Dict[str, str]:
    import onnxruntime
    import onnxscript

    return {"torch": torch.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


def cache_key(model_sha256: str) -> str:
    spec = json.dumps({"model": model_sha256, **versions()}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _input_names(model) -> Tuple[str, ...]:
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in accepted else ())


class _Logits(torch.nn.Module):
    """The graph exported: token ids in, logits out."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def _rows(model, rows: int, tokens: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Token ids of `rows` rows padded to `tokens`; the first row the longest, the others shorter."""
    vocab = model.config.vocab_size
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(rows, tokens), dtype=np.int64)
    lengths = np.maximum(1, (tokens * np.linspace(1, 0.3, rows)).astype(np.int64))
    mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int64)
    out = {"input_ids": ids * mask, "attention_mask": mask}
    if "token_type_ids" in _input_names(model):
        out["token_type_ids"] = np.zeros_like(ids)
    return out


def _export(model, directory: Path) -> None:
    names = _input_names(model)
    example = tuple(torch.from_numpy(v) for v in _rows(model, 2, 16, np.random.default_rng(SEED)).values())
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {name: {0: batch, 1: sequence} for name in names}
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" and the like, per export
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Logits(model, names),
                example,
                dynamo=True,
                dynamic_shapes=(tuple(dims[n] for n in names),),  # forward(*inputs): one varargs entry
                input_names=list(names),
                output_names=["logits"],
                optimize=True,
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)
    program.save(str(directory / FILES["fp32"]))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs each tensor it leaves alone, and advice, to the root logger
    try:
        quantize_dynamic(
            str(directory / FILES["fp32"]),
            str(directory / FILES["int8"]),
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        root.setLevel(level)


def _check(model, directory: Path) -> Dict[str, dict]:
    """Per precision: the max |logit difference| from torch fp32 and the correlation with its logits, on
    CHECK_SHAPES rows, and whether that is within what the check allows."""
    rng = np.random.default_rng(SEED + 1)
    batches = [_rows(model, rows, tokens, rng) for rows, tokens in CHECK_SHAPES]
    with torch.inference_mode():
        reference = [model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.float().numpy() for b in batches]
    out = {}
    for precision, name in FILES.items():
        session = new_session(str(directory / name), threads=1)
        got, want = [], []
        for batch, ref in zip(batches, reference):
            logits = session.run(["logits"], batch)[0]
            if logits.shape != ref.shape:
                raise RecipeError(f"ONNX export ({precision}): logits of shape {logits.shape}, torch's {ref.shape}")
            keep = batch["attention_mask"].astype(bool) if ref.ndim == 3 else slice(None)  # padding: nobody's
            got.append(logits[keep].ravel())
            want.append(ref[keep].ravel())
        got, want = np.concatenate(got), np.concatenate(want)
        diff, corr = float(np.abs(got - want).max()), float(np.corrcoef(got, want)[0, 1])
        ok = diff <= MAX_ABS_DIFF if precision == "fp32" else corr >= MIN_CORRELATION
        out[precision] = {"max_abs_diff": float(f"{diff:.3g}"), "correlation": round(corr, 5), "ok": bool(ok)}
    return out


def _calibrate(model, local_model: str, directory: Path) -> Optional[dict]:
    """The task metric at fp32 (torch) and int8 (ONNX Runtime) on the validation examples saved with the model, and
    whether int8 keeps it within INT8_MAX_LOSS; None for a model saved without them."""
    from transformers import AutoTokenizer

    from recipes import tasks
    from recipes.runtime import Runtime

    sample_path = Path(local_model) / tasks.CALIBRATION
    if not sample_path.is_file():
        return None
    task = tasks.of_model(model.config, local_model)
    tokenizer = AutoTokenizer.from_pretrained(local_model)
    table = tasks.calibration_table(task, json.loads(sample_path.read_text()))
    encoded = task.encode(table, tokenizer, tokenizer.model_max_length)
    rt, threads = Runtime(torch.device("cpu")), torch.get_num_threads()
    results = {}
    int8 = OrtModel(str(directory / FILES["int8"]), model.config, threads)
    for precision, forward in (("fp32", model), ("int8", int8)):
        results[precision] = task.score(task.predict(forward, encoded, rt, 16, torch.float32, tokenizer), encoded)
    # the metric that picks the best checkpoint; where that is the loss, the F1 the loss stands for
    metric = task.cfg.metric
    if metric == "loss":
        metric = next(k for k in ("f1_micro", "f1") if k in results["fp32"])
    scores = {precision: float(result[metric]) for precision, result in results.items()}
    rows = len(encoded.lengths)
    return {
        "rows": rows,
        "metric": metric,
        **{k: round(v, 5) for k, v in scores.items()},
        "int8_max_loss": INT8_MAX_LOSS,
        "min_rows": INT8_MIN_ROWS,
        "int8_keeps_quality": rows >= INT8_MIN_ROWS and scores["int8"] >= scores["fp32"] - INT8_MAX_LOSS,
    }


def new_session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what the check ran with
    # idle threads spin by default: that takes the CPU the read tasks and the other actors need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _verified(directory: Path, where: str) -> dict:
    manifest = json.loads((directory / MANIFEST).read_text())
    for name, digest in manifest["sha256"].items():
        path = directory / name
        if not path.is_file() or storage.file_sha256(str(path)) != digest:
            raise RecipeError(
                f"{where}/{name}: not the file this export wrote (sha256 differs from {MANIFEST}); "
                f"delete {where} to export the model again"
            )
    return manifest


def prepare(local_model: str, model_dir: str, task_name: str, precision: str) -> Tuple[str, str]:
    """(key of the model's checked export, the precision to run): exported and checked first where the cache has
    none. The cache goes beside the model: in its local copy, and uploaded to `model_dir` where that is remote. One
    process at a time per cache (the others then find it complete). precision auto: int8 where the export's
    calibration says it keeps the model's quality, else fp32. An int8 export that failed its check is refused here
    (fp32 stays usable)."""
    model_sha256 = storage.model_sha256(local_model)
    key = cache_key(model_sha256)
    local = Path(local_model) / CACHE_DIR / key
    where = storage.join(model_dir, CACHE_DIR, key)
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        lock = open(local.parent / f".{key}.lock", "w")
    except OSError as e:
        raise RecipeError(
            f"model_dir={model_dir}: cannot write its ONNX export cache ({e.strerror}: {local.parent}); "
            "use engine=torch, or a copy of the model in a writable directory"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (local / MANIFEST).is_file():
            _export_checked(local, local_model, model_sha256, model_dir, where, task_name)
    manifest = _verified(local, where)
    if precision == "auto":
        keeps = (manifest.get("calibration") or {}).get("int8_keeps_quality")
        precision = "int8" if keeps and not int8_may_saturate() else "fp32"
        log.info(
            "onnx: precision=auto runs %s (calibration: %s%s)",
            precision,
            manifest.get("calibration"),
            "; no VNNI on this x86 CPU: ORT's int8 kernels can saturate" if keeps and precision == "fp32" else "",
        )
    check = manifest["check"][precision]
    if not check["ok"]:
        raise RecipeError(
            f"precision={precision}: the ONNX export of model_dir={model_dir} correlates {check['correlation']} "
            f"with torch's logits (needed: {MIN_CORRELATION}); use precision=fp32 or engine=torch"
        )
    log.info("onnx: export %s of %s, checked against torch: %s", key, model_dir, manifest["check"])
    return key, precision


def int8_may_saturate() -> bool:
    """An x86 CPU without VNNI: ONNX Runtime's int8 x int8 kernels there (VPMADDUBSW) can saturate (its quantization
    docs), so int8 measured on a VNNI machine would not be the int8 run here."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return True
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def _export_checked(
    local: Path, local_model: str, model_sha256: str, model_dir: str, where: str, task_name: str
) -> None:
    from recipes import tasks
    from recipes.model import attn_implementation

    log.info("onnx: exporting %s, once per model (cached in %s)", model_dir, where)
    model, _, _ = tasks.load_trained(local_model, attn_implementation(None, torch.device("cpu"), torch.float32))
    model.eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        _export(model, tmp)
        checks = _check(model, tmp)
        if not checks["fp32"]["ok"]:
            raise RecipeError(
                f"model_dir={model_dir}: its ONNX export differs from torch by {checks['fp32']['max_abs_diff']:g} in "
                f"a logit (allowed: {MAX_ABS_DIFF:g}; {task_name}, {versions()}); use engine=torch"
            )
        calibration = _calibrate(model, local_model, tmp)
        manifest = {
            "calibration": calibration,
            "model_sha256": model_sha256,
            "versions": versions(),
            "sha256": {name: storage.file_sha256(str(tmp / name)) for name in FILES.values()},
            "check": checks,
            "allowed": {"fp32_max_abs_diff": MAX_ABS_DIFF, "int8_min_correlation": MIN_CORRELATION},
            "checked_shapes": [list(s) for s in CHECK_SHAPES],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the export complete
        if storage.is_remote(model_dir):
            for name in (*FILES.values(), MANIFEST):  # export.json last: a reader sees a complete export or none
                storage.upload(tmp / name, storage.join(where, name))
        shutil.rmtree(local, ignore_errors=True)  # an interrupted export's leftovers
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def session_model(local_model: str, key: str, precision: str, config, threads: int) -> "OrtModel":
    """The checked export `key` of a model, at `precision`, as a model."""
    directory = Path(local_model) / CACHE_DIR / key
    _verified(directory, str(directory))
    return OrtModel(str(directory / FILES[precision]), config, threads)


class OrtModel:
    """What the batching and the tasks call as a model, on ONNX Runtime: model(**batch).logits."""

    def __init__(self, path: str, config, threads: int):
        self.config = config
        self.session = new_session(path, threads)
        self.inputs = {i.name for i in self.session.get_inputs()}

    def eval(self) -> "OrtModel":
        return self

    def to(self, device) -> "OrtModel":
        return self

    def __call__(self, input_ids, attention_mask, token_type_ids: Optional[torch.Tensor] = None, **_):
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = (
                np.zeros_like(feed["input_ids"]) if token_type_ids is None else token_type_ids.cpu().numpy()
            )
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))
