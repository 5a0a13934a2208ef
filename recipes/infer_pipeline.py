"""The Ray Data pipeline of batch inference.

    read tasks (CPU): parse one input file block by block, tokenize each block
    -> predictor actors (model loaded once each): predict a block sorted by length, commit its shard
    -> the driver: one summary row per committed block (progress, then the _SUCCESS counts)

A block travels as ONE row holding the whole encoded block (an Arrow IPC buffer). Ray Data
splits and merges blocks of rows as it sees fit; a row it never splits, so an actor always
gets a whole input block and can commit it as one shard.
"""

import functools
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from recipes import storage
from recipes.errors import RecipeError
from recipes.infer_input import BlockReader, Columns, InputFile, RawBlock
from recipes.infer_output import OutputDir, commit_shard, shard_name

# A read task's CPU reservation: small, so the actors (cpus_per_actor each) never take every CPU
# and leave the read tasks that feed them waiting (a deadlock on 2-core machines).
READ_CPUS = 0.25


@dataclass(frozen=True)
class ReadSpec:
    columns: Columns
    block_rows: int
    max_length: int
    strict: bool
    task: object  # the model's task (recipes/tasks): its encode_block
    tokenizer: "ray.ObjectRef"  # put once, fetched once per worker process


@dataclass(frozen=True)
class PredictSpec:
    model_dir: str  # as given: local path or URL
    local_model_dir: str  # the driver's copy: used where visible (same node or shared filesystem)
    precision: str
    engine: str  # torch or onnx
    onnx_key: Optional[str]  # engine onnx: the model's checked export (recipes/onnx_engine.py)
    use_gpu: bool
    threads: int
    batch_size: int
    task: object  # the model's task (recipes/tasks): its predict_block
    id_name: str  # the id column of the output
    output: str
    output_format: str


@functools.lru_cache(maxsize=4)
def _fetch(ref: "ray.ObjectRef"):
    return ray.get(ref)


def _pack(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def encode_block(block: RawBlock, file: InputFile, spec: ReadSpec, tokenizer) -> pa.Table:
    """One row per input row: id, line, the task's encoded columns (null for a bad row), the reason a row is
    reported, and whether it was truncated to max_length (counted, not reported: that is expected)."""
    reasons = [e[0] if e else None for e in block.errors]
    details = [e[1] if e else None for e in block.errors]
    good = [i for i, e in enumerate(block.errors) if e is None]
    pairs = [block.pairs[i] for i in good] if spec.columns.pair is not None else None
    enc = spec.task.encode_block(tokenizer, [block.texts[i] for i in good], pairs, spec.max_length)
    truncated = [False] * len(block.lines)
    for j, i in enumerate(good):
        truncated[i] = bool(enc.truncated[j])
    if spec.strict:
        for line, detail in zip(block.lines, details):
            if detail is not None:
                raise RecipeError(f"{file.url} line {line}: {detail} (strict=true stops at the first bad row)")
    columns = {
        "id": pa.array(block.ids, pa.string()),
        "line": pa.array(block.lines, pa.int64()),
        "skipped": pa.array([e is not None for e in block.errors], pa.bool_()),
        "truncated": pa.array(truncated, pa.bool_()),
        "reason": pa.array(reasons, pa.string()),
        "detail": pa.array(details, pa.string()),
    }
    position = [None] * len(block.lines)  # input row -> its encoded row
    for j, i in enumerate(good):
        position[i] = j
    for name, values in enc.columns.items():
        columns[name] = values.take(pa.array(position, pa.int64()))
    return pa.table(columns)


def read_units(file: InputFile, spec: ReadSpec, skip: FrozenSet[int]) -> Iterator[pa.Table]:
    tokenizer = _fetch(spec.tokenizer)
    for block in BlockReader(file, spec.columns, spec.block_rows).blocks(skip):
        yield pa.table(
            {
                "shard": [shard_name(file.index, block.index)],
                "file": [file.url],
                "rows": [len(block)],
                "bytes": [block.bytes],
                "data": pa.array([_pack(encode_block(block, file, spec, tokenizer))], pa.binary()),
            }
        )


class BlockSource(Datasource):
    """One read task per input file; blocks in `skip` (file index -> block indices) are committed already."""

    def __init__(self, files: List[InputFile], spec: ReadSpec, skip: Dict[int, FrozenSet[int]]):
        super().__init__()
        self.files, self.spec, self.skip = files, spec, skip

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return sum(f.size for f in self.files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> List[ReadTask]:
        spec = self.spec
        return [
            ReadTask(
                functools.partial(read_units, f, spec, self.skip.get(f.index, frozenset())),
                BlockMetadata(num_rows=None, size_bytes=f.size, input_files=[f.url], exec_stats=None),
            )
            for f in self.files
        ]


class Predictor:
    """A Ray actor: loads the model once, then predicts and commits one input block per call."""

    def __init__(self, spec: PredictSpec):
        import torch

        from recipes.infer_predict import DTYPES, Runner, load_for_inference

        torch.set_num_threads(spec.threads)  # Ray caps an actor's threads at its (fractional) CPU grant otherwise
        self.spec = spec
        device = torch.device("cuda" if spec.use_gpu else "cpu")
        model_dir = spec.local_model_dir if os.path.isdir(spec.local_model_dir) else self._download(spec.model_dir)
        model, tokenizer, _ = load_for_inference(
            model_dir, spec.precision, device, spec.engine, spec.onnx_key, spec.threads
        )
        pad = model.config.pad_token_id
        self.runner = Runner(
            model, tokenizer, device, DTYPES[spec.precision], spec.batch_size, 0 if pad is None else int(pad)
        )
        self.out = OutputDir(spec.output)

    @staticmethod
    def _download(model_dir: str) -> str:
        if not storage.is_remote(model_dir):
            raise RecipeError(
                f"model_dir={model_dir}: not found on node {socket.gethostname()}; "
                "use a shared filesystem or a gs:// URL"
            )
        local = Path(tempfile.mkdtemp(prefix="text-recipes-model-"))  # private: actors on one node do not race
        storage.download(model_dir.rstrip("/") + "/", local)
        return str(local)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self._commit(row) for row in batch.to_pylist()])

    def _commit(self, unit: dict) -> dict:
        spec = self.spec
        started = time.time()
        table = _unpack(unit["data"])
        good = table.filter(pc.invert(table.column("skipped")))
        predictions = pa.table({spec.id_name: good.column("id"), **spec.task.predict_block(self.runner, good)})
        reported = (
            table.filter(pc.is_valid(table.column("reason"))).select(["line", "id", "reason", "detail"]).to_pylist()
        )
        errors = [{"file": unit["file"], **e} for e in reported]
        bad: Dict[str, int] = {}
        for e in errors:
            bad[e["reason"]] = bad.get(e["reason"], 0) + 1
        summary = {
            "rows": unit["rows"],
            "predicted": good.num_rows,
            "truncated": pc.sum(good.column("truncated")).as_py() or 0,
            "bad": bad,
            "bytes": unit["bytes"],
            "engine": spec.engine,
            "precision": spec.precision,
            "started": started,
            "ended": time.time(),
            "actor": f"{socket.gethostname()}:{os.getpid()}",
        }
        commit_shard(self.out, unit["shard"], self._writer(predictions), spec.output_format, errors, summary)
        return {"shard": unit["shard"], **summary, "bad": json.dumps(bad)}

    def _writer(self, table: pa.Table):
        if self.spec.output_format == "parquet":
            return lambda path: pq.write_table(table, path)

        def write_jsonl(path: str) -> None:
            with open(path, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

        return write_jsonl
