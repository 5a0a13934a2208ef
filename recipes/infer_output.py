"""The output directory of batch inference, and how its files are committed.

    part-<file>-<block>.parquet   predictions of one input block (or .jsonl with output_format=jsonl)
    _job.json                     what produced them: model digest, input files, settings
    _errors.jsonl                 bad rows: file, line, id, reason, detail
    _SUCCESS                      written last: counts per reason, shards, rows, timings
    _done/, _errors/              while running: one commit marker (and bad rows) per finished block

Each shard is committed on its own: written under a temporary name and renamed (on gs://, an
object appears only once uploaded), then its marker in _done/ is written. A rerun skips blocks
with a marker and rewrites any other, so every input row ends up in exactly one shard. Names
starting with "_" or "." are skipped by Parquet dataset readers (pyarrow, pandas, Spark).
"""

import json
import os
import tempfile
import uuid
from typing import Callable, Dict, List, Optional

from fsspec.implementations.local import LocalFileSystem

from recipes import storage
from recipes.errors import RecipeError

JOB = "_job.json"
SUCCESS = "_SUCCESS"
DONE = "_done"
ERRORS_DIR = "_errors"
ERRORS = "_errors.jsonl"


def shard_name(file_index: int, block_index: int) -> str:
    return f"part-{file_index:05d}-{block_index:06d}"


class OutputDir:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = storage.filesystem(url)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def uri(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def write(self, name: str, writer: Callable[[str], None]) -> None:
        """`writer(local_path)` writes the file; it appears under `name` complete or not at all."""
        if self.is_local:
            final = self.path(name)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                writer(tmp)
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, os.path.basename(name))
            writer(tmp)
            self.fs.put_file(tmp, self.path(name))  # an object store creates the object whole

    def write_text(self, name: str, text: str) -> None:
        def writer(path: str) -> None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)

        self.write(name, writer)

    def read_text(self, name: str) -> str:
        return self.fs.cat_file(self.path(name)).decode("utf-8")

    def entries(self, sub: str = "") -> List[str]:
        """File and directory names in the output directory (or its subdirectory `sub`); [] if missing."""
        where = self.path(sub) if sub else self.root
        if not self.is_local:  # other processes (the actors, a killed run) add files: no listing gcsfs cached
            self.fs.invalidate_cache(where)
        if self.fs.isfile(where):
            raise RecipeError(f"output={self.url}: is a file; expected a directory")
        if not self.fs.isdir(where):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(where, detail=False))

    def read_all(self, sub: str) -> Dict[str, bytes]:
        """Every file in subdirectory `sub`, by name (one batched request on object stores)."""
        names = [n for n in self.entries(sub) if not n.startswith(".")]
        contents = self.fs.cat([self.path(f"{sub}/{n}") for n in names]) if names else {}
        return {n: contents[self.path(f"{sub}/{n}")] for n in names}

    def remove(self, name: str) -> None:
        if self.fs.exists(self.path(name)):
            self.fs.rm(self.path(name), recursive=True)

    def remove_temporaries(self) -> None:
        """What a killed run left half-written (local only: object stores have no partial objects)."""
        if not self.is_local or not os.path.isdir(self.root):
            return
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                if n.startswith(".") and n.endswith(".tmp"):
                    os.remove(os.path.join(dirpath, n))


def prepare(out: OutputDir, job: dict, overwrite: bool) -> Optional[dict]:
    """The _SUCCESS manifest if this very job already finished in `out`; else `out` is made ready to start or resume.

    A directory holding another model's or another input's results is refused: mixing them
    would leave an output that is neither.
    """
    entries = [e for e in out.entries() if not e.startswith(".")]
    if overwrite and entries:
        for e in entries:
            out.remove(e)
        entries = []
    if JOB in entries:
        previous = json.loads(out.read_text(JOB))
        changed = [k for k in job if previous.get(k) != job[k]]
        if changed:
            raise RecipeError(
                f"output={out.url}: holds results of another job ({', '.join(changed)} differ); "
                "use another output directory, or overwrite=true to replace them"
            )
        if SUCCESS in entries:
            return json.loads(out.read_text(SUCCESS))
    elif entries:
        raise RecipeError(
            f"output={out.url}: not empty and not written by `run.py infer` (holds {', '.join(entries[:3])}); "
            "use another output directory, or overwrite=true to replace its contents"
        )
    else:
        out.write_text(JOB, json.dumps(job, indent=2) + "\n")
    out.remove_temporaries()
    return None


def committed(out: OutputDir) -> Dict[str, dict]:
    """Commit markers of the blocks already done: shard name -> its counts."""
    return {name[: -len(".json")]: json.loads(data) for name, data in out.read_all(DONE).items()}


def commit_shard(
    out: OutputDir, name: str, write_shard: Callable[[str], None], suffix: str, errors: List[dict], summary: dict
) -> None:
    """Shard, then its bad rows, then the marker that says both are complete."""
    out.write(f"{name}.{suffix}", write_shard)
    if errors:
        out.write_text(f"{ERRORS_DIR}/{name}.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    out.write_text(f"{DONE}/{name}.json", json.dumps(summary))


def totals(markers: Dict[str, dict]) -> dict:
    bad: Dict[str, int] = {}
    for m in markers.values():
        for reason, n in m["bad"].items():
            bad[reason] = bad.get(reason, 0) + n
    return {
        "rows": sum(m["rows"] for m in markers.values()),
        "predicted": sum(m["predicted"] for m in markers.values()),
        "bad_rows": dict(sorted(bad.items())),
        # rows longer than max_length, predicted from their first max_length tokens: expected, so not bad rows
        "truncated": sum(m.get("truncated", 0) for m in markers.values()),
        "shards": len(markers),
        # engine and precision of each run that committed blocks (markers before engines were recorded: torch)
        "engine": sorted({m.get("engine", "torch") for m in markers.values()}),
        "precision": sorted({m["precision"] for m in markers.values()}),
    }


def finish(out: OutputDir, manifest: dict) -> dict:
    """Bad rows gathered into _errors.jsonl, then _SUCCESS; the per-block markers are no longer needed."""
    parts = [n for n in out.entries(ERRORS_DIR) if not n.startswith(".")]

    def write_errors(path: str) -> None:
        with open(path, "wb") as f:
            for name in parts:  # one at a time: there may be many bad rows
                f.write(out.fs.cat_file(out.path(f"{ERRORS_DIR}/{name}")))

    out.write(ERRORS, write_errors)
    out.write_text(SUCCESS, json.dumps(manifest, indent=2) + "\n")
    out.remove(DONE)
    out.remove(ERRORS_DIR)
    return manifest
