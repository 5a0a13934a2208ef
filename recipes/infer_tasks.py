"""What batch inference does per kind of model: encode rows into tokens, turn logits into output columns.

A new task plugs in with one entry in TASKS (keyed by the model's config.problem_type); the
pipeline only calls `encode` (in the read tasks) and `outputs` (in the predictor actors).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Head:
    """The model's labels and the output options."""

    labels: List[str]
    thresholds: Optional[np.ndarray]  # multi-label: one per label, saved with the model
    all_scores: bool
    top_k: int


@dataclass
class Encoded:
    input_ids: List[List[int]]
    token_type_ids: Optional[List[List[int]]]  # only for text pairs: zeros otherwise, the model's default
    truncated: List[bool]


def encode_text(tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> Encoded:
    """Tokens as training made them (truncation=True, max_length), and which rows lost tokens to truncation."""
    kwargs = dict(truncation=True, return_attention_mask=False, return_token_type_ids=pairs is not None)
    # one token over the limit tells truncation apart without tokenizing an over-long text in full
    enc = tokenizer(texts, pairs, max_length=max_length + 1, **kwargs)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids")
    over = [i for i, row in enumerate(ids) if len(row) > max_length]
    if over:
        again = tokenizer([texts[i] for i in over], [pairs[i] for i in over] if pairs is not None else None, max_length=max_length, **kwargs)
        for j, i in enumerate(over):
            ids[i] = again["input_ids"][j]
            if types is not None:
                types[i] = again["token_type_ids"][j]
    truncated = [False] * len(ids)
    for i in over:
        truncated[i] = True
    return Encoded(ids, types, truncated)


def _scores_column(probs: np.ndarray, head: Head) -> Dict[str, pa.Array]:
    if not head.all_scores:
        return {}
    fields = [pa.array(probs[:, j], pa.float32()) for j in range(len(head.labels))]
    return {"scores": pa.StructArray.from_arrays(fields, names=head.labels)}


def single_label_outputs(logits: np.ndarray, head: Head) -> Dict[str, pa.Array]:
    """`label` and its probability `score` (softmax); `scores`: every label's."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return {
        "label": pa.array([head.labels[j] for j in best], pa.string()),
        "score": pa.array(probs[np.arange(len(best)), best], pa.float32()),
        **_scores_column(probs, head),
    }


TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))


def multi_label_outputs(logits: np.ndarray, head: Head) -> Dict[str, pa.Array]:
    """`labels` at or above their thresholds (most probable first), `top_k` labels with probabilities (sigmoid)."""
    probs = 1 / (1 + np.exp(-logits))
    order = np.argsort(-probs, axis=1, kind="stable")
    chosen = [[head.labels[j] for j in row if p[j] >= head.thresholds[j]] for row, p in zip(order, probs)]
    k = min(head.top_k, len(head.labels))
    top = [[{"label": head.labels[j], "score": float(p[j])} for j in row[:k]] for row, p in zip(order, probs)]
    return {
        "labels": pa.array(chosen, pa.list_(pa.string())),
        "top_k": pa.array(top, TOP_K_TYPE),
        **_scores_column(probs, head),
    }


@dataclass(frozen=True)
class Task:
    encode: Callable[..., Encoded]
    outputs: Callable[[np.ndarray, Head], Dict[str, pa.Array]]


TASKS: Dict[str, Task] = {
    "single_label_classification": Task(encode_text, single_label_outputs),
    "multi_label_classification": Task(encode_text, multi_label_outputs),
}
