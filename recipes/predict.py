"""Running a model over an encoded split: length-sorted batches, the work shared across ranks."""

from typing import Callable, Dict, List

import numpy as np
import torch
from tqdm import tqdm

from recipes import data
from recipes.runtime import Runtime


def over_batches(
    model,
    encoded: data.Encoded,
    rt: Runtime,
    batch_size: int,
    pad_id: int,
    fn: Callable[[Dict[str, torch.Tensor]], List],
) -> List:
    """fn(batch on the device) -> one result per example of the batch; returns every example's, in input order, on
    every rank."""
    # XLA's lazy tensors cannot be inference tensors: training would meet them again after evaluation
    with torch.no_grad() if rt.xla else torch.inference_mode():
        return _over_batches(model, encoded, rt, batch_size, pad_id, fn)


def _over_batches(model, encoded, rt, batch_size, pad_id, fn) -> List:
    model.eval()
    order = np.argsort(-encoded.lengths, kind="stable")  # longest first: little padding per batch
    mine = order[rt.rank :: rt.world_size]
    out: List = []
    batches = range(0, len(mine), batch_size)
    for start in tqdm(batches, desc="predict", unit="batch", leave=False, disable=not rt.is_main or len(batches) < 10):
        idx = mine[start : start + batch_size]
        batch = data.collate(encoded, idx, pad_id, rt.batch_width(int(encoded.lengths[idx].max())))
        out.extend(fn({k: v.to(rt.device) for k, v in batch.items()}))
    result: List = [None] * len(order)
    for idx, part in rt.gather((mine, out)):
        for i, value in zip(idx, part):
            result[i] = value
    return result
