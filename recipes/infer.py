"""Batch inference: predict every row of large text files with a trained model (labels, keyphrases or generated text).

    python run.py infer model_dir=outputs/<run>/model input=data/*.jsonl output=outputs/scored

Everything that can be checked before work is (model, files, columns, output directory); then a
Ray Data pipeline streams the input through read tasks and predictor actors (infer_pipeline.py),
each input block committed as one output shard. A rerun of the same command after a crash or
kill -9 predicts only the blocks not yet committed.
"""

import contextlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from typing import Dict, FrozenSet

from tqdm import tqdm

from recipes import storage, tasks
from recipes.errors import RecipeError
from recipes.infer_input import Columns, list_files
from recipes.infer_output import OutputDir, committed, finish, prepare, totals

log = logging.getLogger("text_recipes")


def _load_model_info(model_dir: str):
    """(local copy, config, tokenizer) of a model written by training; one-line errors otherwise."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        local = storage.local_model_dir(model_dir)
    except FileNotFoundError:
        raise RecipeError(f"model_dir={model_dir}: no such directory") from None
    if not os.path.isdir(local):
        raise RecipeError(f"model_dir={model_dir}: no such directory")
    try:
        config = AutoConfig.from_pretrained(local)
        tokenizer = AutoTokenizer.from_pretrained(local)
    except (OSError, ValueError) as e:
        raise RecipeError(f"model_dir={model_dir}: cannot load ({str(e).strip().splitlines()[0]})") from None
    return local, config, tokenizer


def _columns(cfg, config, task) -> Columns:
    trained = getattr(config, "text_recipes", None) or {}
    text = cfg.text_column or trained.get("text_column") or "text"
    pair = cfg.text_pair_column or trained.get("text_pair_column")
    names = tuple(cfg.column_names) if cfg.column_names is not None else None
    if pair is not None and not task.reads_pairs:
        raise RecipeError(f"text_pair_column={pair!r}: a {task.name} model reads one text per row; leave it null")
    if pair == text:
        raise RecipeError(f"text_pair_column={pair!r}: must differ from text_column")
    return Columns(text=text, pair=pair, id=cfg.id_column, names=names)


def _max_length(cfg, config, tokenizer) -> int:
    encoder = getattr(config, "encoder", config)  # an encoder-decoder reads its input with its encoder
    limit = getattr(encoder, "max_position_embeddings", None) or 10**9
    if cfg.max_length is not None:
        if cfg.max_length > limit:
            raise RecipeError(f"max_length={cfg.max_length}: this model takes at most {limit} tokens")
        return cfg.max_length
    return min(tokenizer.model_max_length, limit)


@contextlib.contextmanager
def ray_session():
    """The Ray cluster at RAY_ADDRESS (set by the cluster bootstrap), else a private one for this run.

    Ray 2.60 turns on token authentication for a new local cluster (unless RAY_AUTH_MODE says
    otherwise) and writes a token to ~/.ray/auth_token if it finds none. The private cluster gets a
    fresh token in RAY_AUTH_TOKEN instead (inherited by its processes): nothing is written to a
    home directory that may be read-only or shared, and no other cluster's token is reused.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver's own bar shows rows/s and ETA
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # every unit (one encoded input block, a few KB and up) its own Ray block: merged into one, a read task's units
    # would all go to one actor; a repartition would need a whole CPU per task, which 2-core nodes lack beside the
    # actors
    ctx.target_max_block_size = 1
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)  # "token authentication is enabled"
    # errors end as one line (--verbose: traceback); Ray Data's log file keeps all
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL)
    # an input with fewer files than actors still feeds them all: each file yields many blocks
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()
        return
    saved = os.environ.get("RAY_AUTH_TOKEN")
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    try:
        ray.init(include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False, logging_level=logging.WARNING)
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_TOKEN", None)
        else:
            os.environ["RAY_AUTH_TOKEN"] = saved


def _pool_size(cfg) -> int:
    """Predictor actors for this cluster; checks that they and the read tasks can all be scheduled."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cfg.actors is not None:
        actors = cfg.actors
    elif cfg.gpus_per_actor > 0:
        actors = int(gpus // cfg.gpus_per_actor)
    else:
        actors = max(1, int(cpus // cfg.threads_per_actor))
    if actors < 1 or actors * cfg.gpus_per_actor > gpus:
        raise RecipeError(
            f"gpus_per_actor={cfg.gpus_per_actor:g}: {actors or 1} actor(s) "
            f"need {max(actors, 1) * cfg.gpus_per_actor:g} GPUs; the Ray cluster has {gpus:g}"
        )
    from recipes.infer_pipeline import READ_CPUS

    if actors * cfg.cpus_per_actor + READ_CPUS > cpus:
        raise RecipeError(
            f"actors={actors} x cpus_per_actor={cfg.cpus_per_actor:g} leaves no CPU for the read tasks on a Ray "
            f"cluster of {cpus:g} CPUs (they need {READ_CPUS}); lower actors or cpus_per_actor"
        )
    return actors


def _engine(cfg, task) -> str:
    import torch

    from recipes.infer_predict import resolve_engine

    device = torch.device("cuda" if cfg.gpus_per_actor > 0 else "cpu")
    return resolve_engine(cfg.engine, task, device, cfg.precision, f"model_dir={cfg.model_dir}")


def _skip(markers: Dict[str, dict]) -> Dict[int, FrozenSet[int]]:
    done: Dict[int, set] = {}
    for name in markers:
        _, file_index, block_index = name.split("-")
        done.setdefault(int(file_index), set()).add(int(block_index))
    return {i: frozenset(blocks) for i, blocks in done.items()}


def _unwrap(e: BaseException) -> BaseException:
    """The exception a Ray task raised, from Ray's wrappers."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        if type(e) is RecipeError:  # not Ray's RayTaskError(RecipeError), whose message holds the remote traceback
            return e
        cause = getattr(e, "cause", None) or e.__cause__
        if cause is None:
            break
        e = cause
    return e


def _run(
    cfg, files, columns, max_length, task, tokenizer, local_model, out, markers, engine, onnx_key, precision
) -> None:
    import ray

    from recipes.infer_pipeline import READ_CPUS, BlockSource, Predictor, PredictSpec, ReadSpec
    from recipes.infer_predict import default_batch_size

    actors = _pool_size(cfg)
    read_spec = ReadSpec(columns, cfg.block_rows, max_length, cfg.strict, task, ray.put(tokenizer))
    predict_spec = PredictSpec(
        cfg.model_dir,
        local_model,
        precision,
        engine,
        onnx_key,
        cfg.gpus_per_actor > 0,
        cfg.threads_per_actor,
        cfg.batch_size or default_batch_size(precision, cfg.gpus_per_actor > 0),
        task,
        columns.id or "id",
        cfg.output,
        cfg.output_format,
    )
    ds = ray.data.read_datasource(
        BlockSource(files, read_spec, _skip(markers)),
        override_num_blocks=len(files),  # one read task per file, its blocks never split
        num_cpus=READ_CPUS,
        # read where the CPUs are; also keeps reads out of the actors (no operator fusion)
        scheduling_strategy="SPREAD",
    )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"spec": predict_spec},
        batch_size=1,
        batch_format="pyarrow",
        # one block in flight per actor: a block waits for an idle actor instead of queueing behind a busy one
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
    )
    total = sum(f.size for f in files)
    done_bytes = sum(m["bytes"] for m in markers.values())
    rows = 0
    start = time.perf_counter()
    log.info(
        "%d input file(s), %d block(s) committed before; %d predictor actor(s), %s %s",
        len(files),
        len(markers),
        actors,
        engine,
        precision,
    )
    with tqdm(
        total=total,
        initial=done_bytes,
        unit="B",
        unit_scale=True,
        desc="infer",
        file=sys.stderr,
        mininterval=0.5,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
    ) as bar:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for summary in batch.to_pylist():
                    rows += summary["rows"]
                    bar.update(summary["bytes"])
                    bar.set_postfix_str(
                        f"{rows} rows, {rows / (time.perf_counter() - start):.1f} rows/s", refresh=False
                    )
        except Exception as e:  # a bad row in strict mode, a missing file: the one line, not Ray's wrapping
            cause = _unwrap(e)
            if isinstance(cause, RecipeError):  # Ray Data appends advice on retries to the message
                raise RecipeError(str(cause).strip().splitlines()[0]) from None
            raise


def infer(cfg) -> dict:
    start = time.time()
    local_model, config, tokenizer = _load_model_info(cfg.model_dir)
    task = tasks.of_model(config, f"model_dir={cfg.model_dir}", cfg.task)
    columns = _columns(cfg, config, task)
    max_length = _max_length(cfg, config, tokenizer)
    files = list_files(cfg.input, cfg.format, columns)
    job = {
        "model_sha256": storage.model_sha256(local_model),
        "files": [[f.name, f.size] for f in files],
        "columns": {"text": columns.text, "pair": columns.pair, "id": columns.id, "names": columns.names},
        "settings": {k: cfg[k] for k in ("max_length", "precision", "block_rows", "output_format")},
        "task": {k: task.cfg[k] for k in tasks.module(task.name).OPTIONS},
    }
    engine = _engine(cfg, task)
    out = OutputDir(cfg.output)
    finished = prepare(out, job, cfg.overwrite)
    if finished is not None:
        print(
            f"output: {cfg.output} "
            f"(complete already: {finished['predicted']} rows predicted, {finished['skipped']} skipped)"
        )
        return finished
    onnx_key, precision = None, "fp32" if cfg.precision == "auto" else cfg.precision
    if engine == "onnx":  # after the output's checks: they are quick, an export is not
        from recipes import onnx_engine

        onnx_key, precision = onnx_engine.prepare(local_model, cfg.model_dir, task.name, cfg.precision)
    markers = committed(out)
    with ray_session():
        pipeline_start = time.time()
        _run(cfg, files, columns, max_length, task, tokenizer, local_model, out, markers, engine, onnx_key, precision)
        pipeline_seconds = time.time() - pipeline_start
    after = committed(out)
    counts = totals(after)
    this_run = [m for name, m in after.items() if name not in markers]
    skipped = counts["rows"] - counts["predicted"]
    manifest = {
        "model_dir": cfg.model_dir,
        "input": cfg.input,
        "files": len(files),
        **counts,
        "skipped": skipped,
        "output_format": cfg.output_format,
        "seconds": round(time.time() - start, 1),
        # this run's Ray pipeline: actors' model loading, reading, predicting
        "pipeline_seconds": round(pipeline_seconds, 1),
    }
    if this_run:  # from the first block an actor began to the last one committed: the rate once models are loaded
        manifest["predict_seconds"] = round(max(m["ended"] for m in this_run) - min(m["started"] for m in this_run), 1)
        manifest["actors_used"] = len({m["actor"] for m in this_run})
    finish(out, manifest)
    bad = ", ".join(f"{reason} {n}" for reason, n in counts["bad_rows"].items())
    if counts["truncated"]:
        log.info("%d rows longer than max_length=%d tokens were truncated to it", counts["truncated"], max_length)
    print(
        f"output: {cfg.output}\nrows:   {counts['predicted']} predicted, {skipped} skipped"
        + (f" (bad rows: {bad}; see _errors.jsonl)" if bad else "")
        + f"\nengine: {', '.join(counts['engine'])}, {', '.join(counts['precision'])}"
    )
    return manifest
