"""Fine-tune a text model for any task of recipes/tasks: an explicit PyTorch training loop.

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

from recipes import checkpoint, data, plots, stopping, tasks, xla
from recipes.errors import Preempted, RecipeError
from recipes.model import attn_implementation, load_tokenizer, set_dropout, use_cpu_dropout
from recipes.runtime import Runtime, autocast_dtype
from recipes.storage import replace_dir

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


def better(metric: str, new: float, best) -> bool:
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


def plot_training_curve(history: list, metric: str, path: str) -> None:
    train = [h for h in history if "train_loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    fig, ax = plots.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in train], [h["train_loss"] for h in train], label="train loss", alpha=0.8)
    ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals and metric != "loss":
        ax2 = ax.twinx()
        ax2.plot(
            [h["step"] for h in evals],
            [h[f"eval_{metric}"] for h in evals],
            "s-",
            color="tab:green",
            label=f"validation {metric}",
        )
        ax2.set_ylabel(metric)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("Training")
    plots.save(fig, path)


def save_model(
    model, tokenizer, task, run: checkpoint.RunDir, data_cfg, rt: Runtime, result=None, calibration=None
) -> None:
    """Write model/ (weights, config with the task, its config, label maps and settings, the input columns;
    tokenizer; a sample of validation examples, tasks.CALIBRATION) atomically."""
    # evaluation and batch inference read the task, its settings and the same columns by default
    model.config.text_recipes = {
        "task": task.name,
        "task_config": OmegaConf.to_container(task.cfg, resolve=True),
        "text_column": data_cfg.text_column,
        "text_pair_column": data_cfg.text_pair_column,
    }
    if result is not None:
        task.save(model.config, result)
    tmp = run.path("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=xla.to_cpu(model.state_dict()) if rt.xla else None)
    tokenizer.save_pretrained(tmp)
    if calibration is not None:
        (tmp / tasks.CALIBRATION).write_text(json.dumps(calibration, ensure_ascii=False))
    replace_dir(tmp, run.path("model"))
    run.publish("model")


class Recipe:
    """One training run: set up in __init__ (data, model, optimizer, resume); train() drives step / evaluate /
    save_checkpoint."""

    def __init__(self, cfg, rt: Runtime):
        self.cfg, self.tc, self.rt = cfg, cfg.trainer, rt
        self.task = tasks.build(cfg.task)
        self.run = checkpoint.RunDir(cfg.output_dir)
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        checkpoint.check_run_dir(self.run, self.config_yaml)
        self.run.check_writable()
        self._setup_data()
        self._setup_model()
        self._resume()

    def _setup_data(self) -> None:
        cfg, task = self.cfg, self.task
        self.tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.max_length)
        tables = data.load_splits(cfg.data, task, needed=("train", "validation"))
        task.fit(tables["train"])
        self.labels = task.vocabulary
        self.train_data = task.encode(tables["train"], self.tokenizer, cfg.model.max_length)
        self.val_data = (
            task.encode(tables["validation"], self.tokenizer, cfg.model.max_length) if "validation" in tables else None
        )
        self.calibration = tasks.calibration_sample(tables["validation"]) if "validation" in tables else None
        self.train_source = tables["train"].source

    def _setup_model(self) -> None:
        cfg, tc, rt = self.cfg, self.tc, self.rt
        self.dtype = autocast_dtype(tc.precision, rt.device)
        seed_everything(tc.seed)  # the same head init on every rank
        attn = attn_implementation(cfg.model.attn_implementation, rt.device, self.dtype)
        self.model = self.task.new_model(cfg.model.name_or_path, attn, self.train_data, self.tokenizer).to(rt.device)
        set_dropout(self.model, cfg.model.dropout)
        if rt.device.type == "cpu":
            use_cpu_dropout(self.model)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        batches = len(
            data.epoch_batches(self.train_data.lengths, tc.batch_size, tc.seed, 0, False, 1, rt.rank, rt.world_size)
        )
        self.steps_per_epoch = math.ceil(batches / tc.grad_accum_steps)
        if self.steps_per_epoch == 0:
            raise RecipeError(
                f"{self.train_source}: {len(self.train_data.lengths)} examples are too few "
                f"for {rt.world_size} processes"
            )
        self.total_steps = tc.max_steps if tc.max_steps > 0 else tc.epochs * self.steps_per_epoch
        try:
            self.scheduler = get_scheduler(
                cfg.optim.scheduler,
                self.optimizer,
                round(cfg.optim.warmup_fraction * self.total_steps),
                self.total_steps,
            )
        except ValueError as e:
            raise RecipeError(f"optim.scheduler={cfg.optim.scheduler!r}: {e}") from None
        # on XLA, xla.step all-reduces the gradients instead of DDP
        use_ddp = rt.distributed and not rt.xla
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
            if use_ddp
            else None
        )
        self.autocast = (
            torch.autocast(rt.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        )
        self.eval_every = tc.eval_every or self.steps_per_epoch
        self.save_every = tc.save_every or self.steps_per_epoch
        self.train_seconds, self.samples, self.writer = 0.0, 0, None

    def _resume(self) -> None:
        rt, run = self.rt, self.run
        self.state = {
            "step": 0,
            "epoch": 0,
            "step_in_epoch": 0,
            "best": None,
            "best_step": None,
            "bad_evals": 0,
            "history": [],
        }
        ckpt = checkpoint.load_latest(run)
        if ckpt is None:
            seed_everything(self.tc.seed + rt.rank)  # distinct dropout masks per rank
            self.finished = False
            return
        if ckpt["labels"] != self.labels:
            raise RecipeError(
                f"{run.url}: its checkpoint was trained on labels {ckpt['labels']}, this data has {self.labels}; "
                "use a new output_dir"
            )
        if ckpt["world_size"] != rt.world_size:
            raise RecipeError(
                f"{run.url}: its checkpoint was written by {ckpt['world_size']} processes, "
                f"this job has {rt.world_size}; "
                f"resume with {ckpt['world_size']} (nnodes x nproc_per_node), or start fresh with another output_dir"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = ckpt["state"]
        set_rng_state(ckpt["rng"][rt.rank])
        done = self.state["step"] >= self.total_steps or self.state.get("stopped")
        self.finished = bool(done) and "metrics.json" in run.entries()
        if rt.is_main:
            log.info("resuming %s from step %d", run.url, self.state["step"])

    def start(self) -> None:
        if not self.rt.is_main:
            return
        self.run.create()
        self.run.write_text("config.yaml", self.config_yaml)
        self.writer = SummaryWriter(str(self.run.path("tb")))
        log.info(
            "%d train / %s validation examples, %s labels, %d steps (%d per epoch), %s on %s x%d",
            len(self.train_data.lengths),
            len(self.val_data.lengths) if self.val_data else 0,
            len(self.labels) if self.labels else "no",
            self.total_steps,
            self.steps_per_epoch,
            str(self.dtype).replace("torch.", ""),
            self.rt.device.type,
            self.rt.world_size,
        )

    def epoch_groups(self) -> list:
        """This epoch's batches (index arrays), grad_accum_steps of them per optimizer step."""
        tc, rt = self.tc, self.rt
        batches = data.epoch_batches(
            self.train_data.lengths,
            tc.batch_size,
            tc.seed,
            self.state["epoch"],
            tc.group_by_length,
            tc.group_size,
            rt.rank,
            rt.world_size,
        )
        return [batches[i : i + tc.grad_accum_steps] for i in range(0, len(batches), tc.grad_accum_steps)]

    def step(self, group) -> torch.Tensor:
        """One optimizer step over a group of batches; returns its loss, still on the device."""
        t0 = time.perf_counter()
        loss_sum = 0.0
        for i, idx in enumerate(group):
            width = self.rt.batch_width(int(self.train_data.lengths[idx].max()))
            batch = data.collate(self.train_data, idx, self.tokenizer.pad_token_id, width)
            batch = {k: v.to(self.rt.device, non_blocking=True) for k, v in batch.items()}
            sync = self.ddp is None or i == len(group) - 1
            with nullcontext() if sync else self.ddp.no_sync(), self.autocast:
                loss = self.task.loss(self.ddp or self.model, batch) / len(group)
            loss.backward()
            loss_sum += loss.detach()  # read at log steps only: reading it syncs with the device
            self.samples += len(idx)
        if self.tc.max_grad_norm > 0:
            clip_gradients(self.model, self.tc.max_grad_norm)
        if self.rt.xla:
            xla.step(self.optimizer)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        self.state["step_in_epoch"] += 1
        self.train_seconds += time.perf_counter() - t0
        return loss_sum

    def log(self, loss, progress) -> None:
        step = self.state["step"]
        if self.rt.is_main and (step % self.tc.log_every == 0 or step == self.total_steps):
            loss, lr = float(loss), self.scheduler.get_last_lr()[0]
            self.state["history"].append({"step": step, "train_loss": loss, "lr": lr})
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def evaluate(self) -> bool:
        """Validate, keep the best model; returns True when early stopping says stop."""
        cfg, rt, state, step = self.cfg, self.rt, self.state, self.state["step"]
        predictions = self.task.predict(
            self.model, self.val_data, rt, self.tc.eval_batch_size, self.dtype, self.tokenizer
        )
        result = self.task.score(predictions, self.val_data, tune=True)
        state["history"].append({"step": step, **{f"eval_{k}": v for k, v in result.items() if isinstance(v, float)}})
        improved = better(cfg.task.metric, result[cfg.task.metric], state["best"])
        if improved:
            state.update(best=result[cfg.task.metric], best_step=step, bad_evals=0, best_metrics=result)
            if rt.is_main:
                save_model(self.model, self.tokenizer, self.task, self.run, cfg.data, rt, result, self.calibration)
        else:
            state["bad_evals"] += 1
        if rt.is_main:
            for k, v in result.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"eval/{k}", v, step)
            log.info(
                "step %d: validation %s loss=%.4f%s",
                step,
                tasks.headline(self.task, result),
                result["loss"],
                " (best)" if improved else "",
            )
        self.model.train()
        return self.tc.early_stopping_patience > 0 and state["bad_evals"] >= self.tc.early_stopping_patience

    def save_checkpoint(self) -> None:
        rt = self.rt
        rngs = rt.gather(rng_state())
        tensors = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if rt.xla:
            tensors = xla.to_cpu(tensors)
        if rt.is_main:
            checkpoint.save(
                self.run,
                self.state["step"],
                {
                    **tensors,
                    "scheduler": self.scheduler.state_dict(),
                    "state": self.state,
                    "rng": rngs,
                    "labels": self.labels,
                    "world_size": rt.world_size,
                },
                self.tc.keep_checkpoints,
            )
        rt.barrier()

    def outputs(self) -> dict:
        state, run = self.state, self.run
        result = {
            "metric": self.cfg.task.metric,
            "best_step": state["best_step"],
            "best_value": state["best"],
            "steps": state["step"],
            "early_stopped": bool(state.get("stopped")),
            "train_samples_per_second": self.samples * self.rt.world_size / self.train_seconds
            if self.train_seconds
            else None,
            "validation": state.get("best_metrics"),
        }
        if self.rt.is_main:
            if self.val_data is None:
                save_model(self.model, self.tokenizer, self.task, run, self.cfg.data, self.rt)
            run.write(
                "training_curve.png", lambda path: plot_training_curve(state["history"], self.cfg.task.metric, path)
            )
            run.write_text("metrics.json", json.dumps(result, indent=2) + "\n")
            self.writer.close()
            run.publish("tb")
            print(f"model:   {run.uri('model')}\nmetrics: {run.uri('metrics.json')}")
        return result


def train(cfg, rt: Runtime) -> dict:
    recipe = Recipe(cfg, rt)
    state, run = recipe.state, recipe.run
    if recipe.finished:  # a finished run relaunched: its outputs stay as they are
        if rt.is_main:
            log.info("%s finished at step %d: nothing to do", run.url, state["step"])
            print(f"model:   {run.uri('model')}\nmetrics: {run.uri('metrics.json')}")
        return json.loads(run.read_text("metrics.json"))
    recipe.start()
    stop = state.get("stopped", False)
    progress = tqdm(
        total=recipe.total_steps,
        initial=state["step"],
        disable=not rt.is_main,
        desc="train",
        unit="step",
        mininterval=0.5 if sys.stderr.isatty() else 30,  # fewer lines in job logs
    )
    with logging_redirect_tqdm():
        while state["step"] < recipe.total_steps and not stop:
            groups = recipe.epoch_groups()
            recipe.model.train()
            for group in groups[state["step_in_epoch"] :]:
                recipe.log(recipe.step(group), progress)
                progress.update()
                step, last, end_of_epoch = (
                    state["step"],
                    state["step"] == recipe.total_steps,
                    state["step_in_epoch"] == len(groups),
                )
                if end_of_epoch:
                    state["epoch"], state["step_in_epoch"] = state["epoch"] + 1, 0
                if recipe.val_data is not None and (step % recipe.eval_every == 0 or end_of_epoch or last):
                    stop = recipe.evaluate()
                preempted = rt.any(stopping.received is not None)
                if step % recipe.save_every == 0 or end_of_epoch or last or stop or preempted:
                    state["stopped"] = stop
                    recipe.save_checkpoint()
                if preempted:
                    progress.close()
                    raise Preempted(
                        f"{stopping.received or 'a signal'} at step {step}: checkpoint saved in {run.url}; "
                        "the same command resumes from it"
                    )
                if last or stop or end_of_epoch:
                    break
    progress.close()
    return recipe.outputs()
