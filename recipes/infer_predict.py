"""A trained model ready for inference at a given precision, and its forward passes over length-sorted batches."""

import ctypes
import ctypes.util
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recipes import tasks
from recipes.errors import RecipeError
from recipes.model import attn_implementation

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}  # int8: quantized weights


def resolve_engine(engine: str, task, device: torch.device, precision: str, where: str) -> str:
    """torch or onnx. auto: ONNX Runtime where it runs the model's task at that precision (encoder tasks on CPU, not
    bf16, onnxruntime installed), else torch. onnx where it cannot: one line."""
    from recipes import onnx_engine

    reasons = [
        (device.type != "cpu", f"it runs on CPU only (device: {device.type})"),
        (not task.onnx, f"{task.name} models run on torch (generation)"),
        (precision == "bf16", "it runs fp32 or int8 here, not bf16"),
        (not onnx_engine.available(), "onnxruntime is not installed (pip install '.[onnx]')"),
    ]
    cannot = [reason for failed, reason in reasons if failed]
    if engine == "onnx" and cannot:
        raise RecipeError(f"engine=onnx: {cannot[0]} ({where}); use engine=torch or auto")
    if engine == "auto":
        return "torch" if cannot else "onnx"
    return engine


def default_batch_size(precision: str, use_gpu: bool) -> int:
    """Rows per forward pass when infer's batch_size is null. Measured on a 2-core Xeon, one thread, MiniLM on
    ~128-token rows: fp32 runs at the same rate from 4 to 16 rows (and slower at 64), int8 ~5 % faster at 8 than
    at 16."""
    if use_gpu:
        return 64
    return 8 if precision == "int8" else 16


def _keep_freed_memory() -> None:
    """Make glibc keep freed memory in this process instead of returning it to the OS.

    int8 forward passes allocate their activations afresh at every layer; glibc unmaps the large ones when freed and
    the next layer page-faults them back in (GELU: 3 ms per call instead of 0.8). Kept, int8 runs at 83-85 rows/s
    instead of 65 (one thread, MiniLM, 2-core Xeon); fp32 gains nothing. Peak memory is unchanged; the process holds it
    until it exits. No-op where the C library is not glibc."""
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    if mallopt is not None:
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        mallopt(m_mmap_threshold, 32 << 20)  # serve blocks up to 32 MB (glibc's maximum) from the heap...
        mallopt(m_trim_threshold, 1 << 30)  # ...and do not give the heap back until 1 GB of it is free


def load_for_inference(model_dir: str, precision: str, device: torch.device, engine="torch", key=None, threads=1):
    """(model, tokenizer, task) of a trained model as inference runs it: on `device` in eval mode; int8: linear
    layers dynamically quantized (weights per output channel: as fast as per tensor, and nearer fp32 on MiniLM);
    engine onnx: its checked ONNX export `key` (recipes/onnx_engine.py)."""
    model, tokenizer, task = tasks.load_trained(model_dir, attn_implementation(None, device, DTYPES[precision]))
    if engine == "onnx":
        from recipes.onnx_engine import session_model

        return session_model(model_dir, key, precision, model.config, threads), tokenizer, task
    model.eval().to(device)
    if precision == "int8":
        _keep_freed_memory()
        # torch deprecates quantized tensors in favour of torchao; still the fastest here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    return model, tokenizer, task


def _pad(seqs: Sequence[np.ndarray], width: int, value: int) -> torch.Tensor:
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out)


def _batches(
    input_ids: Sequence[np.ndarray], token_type_ids: Optional[Sequence[np.ndarray]], batch_size: int, pad_id: int
) -> Iterator[Tuple[np.ndarray, dict]]:
    """(row indices, padded CPU batch), cut from the rows sorted by length so that batches pad little."""
    lengths = np.array([len(x) for x in input_ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        batch = {
            "input_ids": _pad([input_ids[i] for i in idx], width, pad_id),
            "attention_mask": (torch.arange(width)[None, :] < torch.from_numpy(lengths[idx])[:, None]).long(),
        }
        if token_type_ids is not None:
            batch["token_type_ids"] = _pad([token_type_ids[i] for i in idx], width, 0)
        yield idx, batch


def predict_logits(
    model,
    input_ids: Sequence[np.ndarray],
    token_type_ids: Optional[Sequence[np.ndarray]],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> np.ndarray:
    """A sequence classifier's logits, in input order."""
    return Runner(model, None, device, dtype, batch_size, pad_id).logits(input_ids, token_type_ids)


@dataclass
class Runner:
    """What a predictor actor holds: the model at its precision, and the batching every task's predict uses."""

    model: torch.nn.Module
    tokenizer: object  # decodes generated text
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    pad_id: int

    def _run(self, input_ids, token_type_ids, fn) -> Iterator[Tuple[np.ndarray, object]]:
        """(row indices, fn(batch on the device)) per length-sorted batch, at the model's precision."""
        with torch.inference_mode():
            for idx, batch in _batches(input_ids, token_type_ids, self.batch_size, self.pad_id):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    yield idx, fn({k: v.to(self.device) for k, v in batch.items()})

    def logits(
        self, input_ids: Sequence[np.ndarray], token_type_ids: Optional[Sequence[np.ndarray]] = None
    ) -> np.ndarray:
        """Per row: a sequence classifier's logits."""
        out = np.empty((len(input_ids), self.model.config.num_labels), dtype=np.float32)
        for idx, logits in self._run(input_ids, token_type_ids, lambda batch: self.model(**batch).logits):
            out[idx] = logits.float().cpu().numpy()
        return out

    def token_logits(self, input_ids: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Per row: the logits of each of its tokens (a token classifier)."""
        out: List[Optional[np.ndarray]] = [None] * len(input_ids)
        for idx, logits in self._run(input_ids, None, lambda batch: self.model(**batch).logits):
            logits = logits.float().cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = logits[row, : len(input_ids[i])]
        return out

    def generate(self, input_ids: Sequence[np.ndarray], **settings) -> List[str]:
        """Per row: the text a seq2seq model generates, by its generation_config and `settings`."""
        out: List[Optional[str]] = [None] * len(input_ids)
        for idx, ids in self._run(input_ids, None, lambda batch: self.model.generate(**batch, **settings)):
            for i, text in zip(idx, self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text.strip()
        return out
