"""Encoded input blocks of batch inference: what a task's encode_block returns and its predict_block reads.

A read task calls `task.encode_block` on the good rows of a block; the Arrow columns it returns travel
to a predictor actor, where `task.predict_block` turns them into output columns.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

IDS = pa.list_(pa.int32())


@dataclass
class Encoded:
    columns: Dict[str, pa.Array]  # one value per encoded row: what predict_block reads
    truncated: List[bool]  # rows that lost tokens to max_length


def lists(arr: pa.ListArray) -> List[np.ndarray]:
    offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


def column(table: pa.Table, name: str) -> List[np.ndarray]:
    return lists(table.column(name).combine_chunks())


def _truncating(tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int, token_types: bool):
    """(input_ids, token_type_ids or None, truncated) as training tokenized (truncation=True, max_length)."""
    if not texts:  # a block of bad rows only; tokenizers fail on empty lists
        return [], [] if token_types else None, []
    kwargs = dict(truncation=True, return_attention_mask=False, return_token_type_ids=token_types)
    # one token over the limit tells truncation apart without tokenizing an over-long text in full
    enc = tokenizer(texts, pairs, max_length=max_length + 1, **kwargs)
    ids, types = enc["input_ids"], enc.get("token_type_ids")
    over = [i for i, row in enumerate(ids) if len(row) > max_length]
    if over:
        again = tokenizer(
            [texts[i] for i in over],
            [pairs[i] for i in over] if pairs is not None else None,
            max_length=max_length,
            **kwargs,
        )
        for j, i in enumerate(over):
            ids[i] = again["input_ids"][j]
            if types is not None:
                types[i] = again["token_type_ids"][j]
    truncated = [False] * len(ids)
    for i in over:
        truncated[i] = True
    return ids, types, truncated


def token_ids(tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> Encoded:
    """input_ids (and token_type_ids for pairs) of a sequence model's inputs, truncated as in training."""
    ids, types, truncated = _truncating(tokenizer, texts, pairs, max_length, token_types=pairs is not None)
    columns = {"input_ids": pa.array(ids, IDS)}
    if types is not None:  # zeros otherwise: the model's default
        columns["token_type_ids"] = pa.array(types, pa.list_(pa.int8()))
    return Encoded(columns, truncated)
