"""Tasks: one module per task owns everything task-specific; train.py, evaluate.py and infer.py know no task.

A task module defines
  Config, check(cfg), METRICS   the keys of conf/task/<name>.yaml, checks of their values, what task.metric may name
  OPTIONS                       the Config keys `run.py infer` may set for a trained model (task.<key>=value)
  TASK                          a class, one instance per run, holding the task config as `cfg`:
    table(df, source, data_cfg, rows)        a split's rows, validated, as the task's examples
    fit(train_table); vocabulary             the label set from training (None where there is none)
    encode(table, tokenizer, max_length)     -> data.Encoded (token ids, lengths, targets)
    model_class(); new_model(name_or_path, attn, encoded_train, tokenizer)
    loss(model, batch)                       the training loss of a collated batch
    predict(model, encoded, rt, batch_size, dtype, tokenizer); score(predictions, encoded, tune)
    decide(...)                              the decision from a model's outputs, used by evaluation and inference
    save(model_config, result)               what config.json keeps beyond the task config (tuned thresholds)
    prediction_rows(table, predictions); plots(run, predictions, encoded)
                                             evaluation's outputs; HEADLINE: its log line
    reads_pairs; encode_block(tokenizer, texts, pairs, max_length); predict_block(runner, table)    batch inference
    onnx                                     whether engine=onnx runs its forward pass (recipes/onnx_engine.py)
    from_model(model_config, cfg)            the task of a trained model

The submit side imports task modules for Config, check and OPTIONS alone: heavy modules come through recipes.lazy.
"""

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from recipes.errors import RecipeError
from recipes.lazy import lazy

transformers = lazy("transformers")
model_loading = lazy("recipes.model")

CONF = Path(__file__).resolve().parents[2] / "conf" / "task"
KINDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}  # OmegaConf's type names


def names() -> Tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def module(name: str):
    if name not in names():
        raise RecipeError(f"task.type={name!r}: expected one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def _fields(name: str) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(module(name).Config))


def typed(node: DictConfig) -> DictConfig:
    """The task config with its module's schema: a misspelt key or a value of the wrong type fails here, by name."""
    if not isinstance(node.get("type"), str):
        raise RecipeError(f"task.type={node.get('type')!r}: expected one of {', '.join(names())}")
    schema = module(node.type).Config
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except ConfigKeyError as e:
        raise RecipeError(
            f"task.{e.key}: unknown key for task={node.type}; keys: {', '.join(_fields(node.type))}"
        ) from None
    except ValidationError as e:
        converted = re.search(r"could not be converted to (\w+)", e.msg)
        kind = KINDS.get(converted.group(1), converted.group(1)) if converted else e.msg
        raise RecipeError(f"task.{e.key}={e.value!r}: expected {kind}") from None


def check(cfg) -> None:
    module(cfg.type).check(cfg)
    allowed = module(cfg.type).METRICS
    if cfg.metric not in allowed:
        raise RecipeError(f"task.metric={cfg.metric!r}: expected one of {', '.join(allowed)} for task={cfg.type}")


def build(cfg):
    """The task of a training run, from its (typed, checked) task config."""
    return module(cfg.type).TASK(cfg)


def options_schema():
    """`run.py infer`'s task node: every task's OPTIONS, typed as in its Config; null keeps the model's setting."""
    fields = {}
    for name in names():
        types = {f.name: f.type for f in dataclasses.fields(module(name).Config)}
        for key in module(name).OPTIONS:
            fields.setdefault(key, (key, Optional[types[key]], dataclasses.field(default=None)))
    return dataclasses.make_dataclass("TaskOptions", list(fields.values()))


def check_options(options) -> None:
    """Values of infer's task options, by the checks of every task that has the option (submit side and job)."""
    for name in names():
        given = {k: v for k, v in options.items() if v is not None and k in module(name).OPTIONS}
        if given:
            node = typed(OmegaConf.merge(_defaults(name), given))
            module(name).check(node)


def _defaults(name: str) -> DictConfig:
    return OmegaConf.load(CONF / f"{name}.yaml")


def of_model(config, where: str, options=None):
    """The task a trained model was trained for, with the task config saved with it; `options` (infer's task node)
    override its OPTIONS."""
    saved = getattr(config, "text_recipes", None) or {}
    name = saved.get("task")
    if name is None:  # saved before tasks were recorded: classifiers only
        name = {"single_label_classification": "single_label", "multi_label_classification": "multi_label"}.get(
            config.problem_type
        )
    if name not in names():
        raise RecipeError(f"{where}: not a model trained by text-recipes (no task recorded in config.json)")
    # a model saved before the task config was: the task's defaults, and the settings saved beside the task
    node = OmegaConf.merge(
        _defaults(name), {k: v for k, v in saved.items() if k in _fields(name)}, saved.get("task_config") or {}
    )
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key not in module(name).OPTIONS:
            allowed = ", ".join(f"task.{k}" for k in module(name).OPTIONS) or "none"
            raise RecipeError(
                f"task.{key}={value!r}: not an option of a {name} model ({where}); its options: {allowed}"
            )
        node[key] = value
    cfg = typed(node)
    check(cfg)
    return module(name).TASK.from_model(config, cfg)


def load_trained(path: str, attn: str):
    """(model, tokenizer, task) of a model directory written by training."""
    name, path = path, model_loading.resolve(path)  # download a remote model once, not once per file type
    config = model_loading.from_pretrained(transformers.AutoConfig, path)
    task = of_model(config, name)
    model = model_loading.from_pretrained(task.model_class(), path, attn_implementation=attn)
    return model, model_loading.from_pretrained(transformers.AutoTokenizer, path), task


CALIBRATION = "calibration.json"  # beside a trained model: validation examples that measure inference settings
CALIBRATION_ROWS = 1000


def calibration_sample(table) -> dict:
    """Up to CALIBRATION_ROWS examples of a validation table (a seeded choice), as JSON: what inference measures a
    faster precision's cost on (recipes/onnx_engine.py)."""
    import random

    n = len(table.rows)
    keep = sorted(random.Random(0).sample(range(n), min(n, CALIBRATION_ROWS)))
    fields = {}
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        fields[f.name] = [value[i] for i in keep] if isinstance(value, list) and len(value) == n else value
    return {"rows": len(keep), "table": fields}


def calibration_table(task, sample: dict):
    """The validation examples of calibration_sample, as the task's Table again."""
    return module(task.name).Table(**sample["table"])


def headline(task, result: dict) -> str:
    return " ".join(f"{k}={result[k]:.4f}" for k in task.HEADLINE if k in result)
