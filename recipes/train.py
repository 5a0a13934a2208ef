"""Fine-tune a text classifier: an explicit PyTorch training loop.

    python run.py train [overrides]

Outputs (cfg.output_dir): model/ (best by cfg.task.metric, from_pretrained-loadable),
checkpoints/, metrics.json, config.yaml, training_curve.png, tb/ (TensorBoard).
Relaunching with the same output_dir resumes from the newest complete checkpoint.
"""
import json
import logging
import math
import random
import shutil
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler

from recipes.runtime import Runtime, StopSignals, autocast_dtype
from recipes import checkpoint, data, metrics, tasks, xla
from recipes.storage import replace_dir
from recipes.errors import Preempted, RecipeError
from recipes.model import attn_implementation, load_tokenizer, set_dropout, use_cpu_dropout

log = logging.getLogger("text_recipes")


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    # no weight decay on biases and LayerNorm weights (the 1-D parameters)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = params[0].device.type in ("cpu", "cuda")  # XLA has no fused AdamW; it fuses the step itself
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def clip_gradients(model: torch.nn.Module, max_norm: float) -> None:
    params = [p for p in model.parameters() if p.grad is not None]
    foreach = params[0].device.type in ("cpu", "cuda")  # XLA has no foreach kernels
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=foreach)
    # On CPU, skip rescaling by 1.0 (a pass over every gradient); on GPUs and XLA the check would stall the device.
    if params[0].device.type != "cpu" or norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=foreach)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_model(model, tokenizer, task, run: checkpoint.RunDir, data_cfg, rt: Runtime, result=None) -> None:
    """Write model/ (weights, config with the task, its label maps and settings, the input columns; tokenizer) atomically."""
    # evaluation and batch inference read the task and the same columns by default
    model.config.text_recipes = {"task": task.name, "text_column": data_cfg.text_column, "text_pair_column": data_cfg.text_pair_column}
    if result is not None:
        task.save(model.config, result)
    tmp = run.path("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=xla.to_cpu(model.state_dict()) if rt.xla else None)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, run.path("model"))
    run.publish("model")


def train(cfg, rt: Runtime) -> dict:
    tc = cfg.trainer
    task = tasks.build(cfg.task)
    run = checkpoint.RunDir(cfg.output_dir)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    checkpoint.check_run_dir(run, config_yaml)
    run.check_writable()

    # ---- data and model
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.max_length)
    tables = data.load_splits(cfg.data, task, needed=("train", "validation"))
    task.fit(tables["train"])
    labels = task.vocabulary
    train_data = task.encode(tables["train"], tokenizer, cfg.model.max_length)
    val_data = task.encode(tables["validation"], tokenizer, cfg.model.max_length) if "validation" in tables else None

    dtype = autocast_dtype(tc.precision, rt.device)
    seed_everything(tc.seed)  # the same classifier-head init on every rank
    model = task.new_model(cfg.model.name_or_path, attn_implementation(cfg.model.attn_implementation, rt.device, dtype), train_data, tokenizer)
    model.to(rt.device)
    set_dropout(model, cfg.model.dropout)
    if rt.device.type == "cpu":
        use_cpu_dropout(model)
    optimizer = make_optimizer(model, cfg.optim)

    batches_per_epoch = len(data.epoch_batches(train_data.lengths, tc.batch_size, tc.seed, 0, False, 1, rt.rank, rt.world_size))
    steps_per_epoch = math.ceil(batches_per_epoch / tc.grad_accum_steps)
    if steps_per_epoch == 0:
        raise RecipeError(f"{tables['train'].source}: {len(train_data.lengths)} examples are too few for {rt.world_size} processes")
    total_steps = tc.max_steps if tc.max_steps > 0 else tc.epochs * steps_per_epoch
    try:
        scheduler = get_scheduler(cfg.optim.scheduler, optimizer, round(cfg.optim.warmup_fraction * total_steps), total_steps)
    except ValueError as e:
        raise RecipeError(f"optim.scheduler={cfg.optim.scheduler!r}: {e}") from None

    # ---- resume
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "best": None, "best_step": None, "bad_evals": 0, "history": []}
    ckpt = checkpoint.load_latest(run)
    if ckpt is not None:
        if ckpt["labels"] != labels:
            raise RecipeError(f"{run.url}: its checkpoint was trained on labels {ckpt['labels']}, this data has {labels}; use a new output_dir")
        if ckpt["world_size"] != rt.world_size:
            raise RecipeError(f"{run.url}: its checkpoint was written by {ckpt['world_size']} processes, this job has {rt.world_size}; "
                              f"resume with {ckpt['world_size']} (nnodes x nproc_per_node), or start fresh with another output_dir")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"][rt.rank])
        if rt.is_main:
            log.info("resuming %s from step %d", run.url, state["step"])
    else:
        seed_everything(tc.seed + rt.rank)  # distinct dropout masks per rank
    if ckpt is not None and (state["step"] >= total_steps or state.get("stopped")) and "metrics.json" in run.entries():
        if rt.is_main:  # a finished run relaunched: its outputs stay as they are
            log.info("%s finished at step %d: nothing to do", run.url, state["step"])
            print(f"model:   {run.uri('model')}\nmetrics: {run.uri('metrics.json')}")
        return json.loads(run.read_text("metrics.json"))
    if rt.is_main:
        run.create()
        run.write_text("config.yaml", config_yaml)
        log.info(
            "%d train / %s validation examples, %s labels, %d steps (%d per epoch), %s on %s x%d",
            len(train_data.lengths), len(val_data.lengths) if val_data else 0, len(labels) if labels else "no", total_steps,
            steps_per_epoch, str(dtype).replace("torch.", ""), rt.device.type, rt.world_size,
        )

    # on XLA, xla.step all-reduces the gradients instead of DDP
    ddp = DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None) if rt.distributed and not rt.xla else None
    train_model = ddp or model
    writer = SummaryWriter(str(run.path("tb"))) if rt.is_main else None
    autocast = torch.autocast(rt.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    eval_every = tc.eval_every or steps_per_epoch
    save_every = tc.save_every or steps_per_epoch

    def evaluate(step: int) -> bool:
        """Validate, keep the best model; returns True when early stopping says stop."""
        predictions = task.predict(model, val_data, rt, tc.eval_batch_size, dtype, tokenizer)
        result = task.score(predictions, val_data, tune=True)
        value = result[cfg.task.metric]
        state["history"].append({"step": step, **{f"eval_{k}": v for k, v in result.items() if isinstance(v, float)}})
        improved = metrics.best_is_better(cfg.task.metric, value, state["best"])
        if improved:
            state.update(best=value, best_step=step, bad_evals=0, best_metrics=result)
            if rt.is_main:
                save_model(model, tokenizer, task, run, cfg.data, rt, result)
        else:
            state["bad_evals"] += 1
        if rt.is_main:
            for k, v in result.items():
                if isinstance(v, float):
                    writer.add_scalar(f"eval/{k}", v, step)
            log.info("step %d: validation %s loss=%.4f%s", step, metrics.headline(result), result["loss"], " (best)" if improved else "")
        return tc.early_stopping_patience > 0 and state["bad_evals"] >= tc.early_stopping_patience

    def save_checkpoint() -> None:
        rngs = rt.gather(rng_state())
        tensors = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if rt.xla:
            tensors = xla.to_cpu(tensors)
        if rt.is_main:
            checkpoint.save(
                run, state["step"],
                {**tensors, "scheduler": scheduler.state_dict(), "state": state, "rng": rngs, "labels": labels, "world_size": rt.world_size},
                tc.keep_checkpoints,
            )
        rt.barrier()

    # ---- the loop
    signals = StopSignals()
    progress = tqdm(total=total_steps, initial=state["step"], disable=not rt.is_main, desc="train", unit="step",
                    mininterval=0.5 if sys.stderr.isatty() else 30)  # fewer lines in job logs
    train_seconds, samples, stop = 0.0, 0, state.get("stopped", False)
    with logging_redirect_tqdm():
        while state["step"] < total_steps and not stop:
            batches = data.epoch_batches(train_data.lengths, tc.batch_size, tc.seed, state["epoch"], tc.group_by_length, tc.group_size, rt.rank, rt.world_size)
            groups = [batches[i : i + tc.grad_accum_steps] for i in range(0, len(batches), tc.grad_accum_steps)]
            model.train()
            for group in groups[state["step_in_epoch"] :]:
                t0 = time.perf_counter()
                loss_sum = 0.0
                for i, idx in enumerate(group):
                    width = rt.batch_width(int(train_data.lengths[idx].max()))
                    batch = {k: v.to(rt.device, non_blocking=True) for k, v in data.collate(train_data, idx, tokenizer.pad_token_id, width).items()}
                    sync = ddp is None or i == len(group) - 1
                    with (nullcontext() if sync else ddp.no_sync()), autocast:
                        loss = task.loss(train_model, batch) / len(group)
                    loss.backward()
                    loss_sum += loss.detach()  # read at log steps only: reading it syncs with the device
                    samples += len(idx)
                if tc.max_grad_norm > 0:
                    clip_gradients(model, tc.max_grad_norm)
                if rt.xla:
                    xla.step(optimizer)
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["step_in_epoch"] += 1
                train_seconds += time.perf_counter() - t0
                step = state["step"]
                progress.update()
                if rt.is_main and (step % tc.log_every == 0 or step == total_steps):
                    loss_sum, lr = float(loss_sum), scheduler.get_last_lr()[0]
                    state["history"].append({"step": step, "train_loss": loss_sum, "lr": lr})
                    writer.add_scalar("train/loss", loss_sum, step)
                    writer.add_scalar("train/lr", lr, step)
                    progress.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}")
                end_of_epoch = state["step_in_epoch"] == len(groups)
                if end_of_epoch:
                    state["epoch"] += 1
                    state["step_in_epoch"] = 0
                last = step == total_steps
                if val_data is not None and (step % eval_every == 0 or end_of_epoch or last):
                    stop = evaluate(step)
                    model.train()
                preempted = rt.any(signals.received is not None)
                if step % save_every == 0 or end_of_epoch or last or stop or preempted:
                    state["stopped"] = stop
                    save_checkpoint()
                if preempted:
                    progress.close()
                    signals.restore()
                    raise Preempted(f"{signals.received or 'a signal'} at step {step}: checkpoint saved in {run.url}; "
                                    "the same command resumes from it")
                if last or stop or end_of_epoch:
                    break
    progress.close()
    signals.restore()

    # ---- outputs
    result = {
        "metric": cfg.task.metric, "best_step": state["best_step"], "best_value": state["best"], "steps": state["step"],
        "early_stopped": bool(state.get("stopped")), "train_samples_per_second": samples * rt.world_size / train_seconds if train_seconds else None,
        "validation": state.get("best_metrics"),
    }
    if rt.is_main:
        if val_data is None:
            save_model(model, tokenizer, task, run, cfg.data, rt)
        run.write("training_curve.png", lambda path: metrics.plot_training_curve(state["history"], cfg.task.metric, path))
        run.write_text("metrics.json", json.dumps(result, indent=2) + "\n")
        writer.close()
        run.publish("tb")
        print(f"model:   {run.uri('model')}\nmetrics: {run.uri('metrics.json')}")
    return result
