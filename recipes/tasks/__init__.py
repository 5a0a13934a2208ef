"""Tasks: one module per task owns everything task-specific; the loops in train.py, evaluate.py and infer.py call it.

A task module defines Config (a dataclass: the keys of its conf/task/<name>.yaml), check(cfg) (their values),
METRICS (what task.metric may name) and TASK, a class with:

  table(df, source, data_cfg, rows)   a split's rows, validated, as the task's examples
  fit(train_table); vocabulary        the label set from training (None where there is none), saved with the model
  encode(table, tokenizer, max_len)   -> data.Encoded (token ids, lengths, targets)
  new_model(name_or_path, attn, enc, tokenizer)  the pretrained model with this task's head;  model_class loads a trained one
  loss(model, batch)                  the training loss of a collated batch
  predict(model, enc, rt, bs, dtype, tokenizer) / score(predictions, enc, tune)   validation and evaluation
  save(config, result)                what the model's config.json keeps (thresholds, generation settings)
  prediction_rows(table, predictions); plots(run, predictions, enc)   evaluation's outputs
  from_model(config)                  the task of a trained model

`task=<module>` picks it; conf/task/<module>.yaml holds its defaults.
"""
import importlib
import pkgutil
import re
from typing import Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from recipes.errors import RecipeError


def names() -> Tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def module(name: str):
    if name not in names():
        raise RecipeError(f"task.type={name!r}: expected one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def typed(node: DictConfig) -> DictConfig:
    """The task config with its module's schema: a misspelt key or a value of the wrong type fails here, by name."""
    if not isinstance(node.get("type"), str):
        raise RecipeError(f"task.type={node.get('type')!r}: expected one of {', '.join(names())}")
    schema = module(node.type).Config
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except ConfigKeyError as e:
        keys = ", ".join(f for f in schema.__dataclass_fields__)
        raise RecipeError(f"task.{e.key}: unknown key for task={node.type}; keys: {keys}") from None
    except ValidationError as e:
        converted = re.search(r"could not be converted to (\w+)", e.msg)
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(converted.group(1), converted.group(1)) if converted else e.msg
        raise RecipeError(f"task.{e.key}={e.value!r}: expected {kind}") from None


def check(cfg) -> None:
    module(cfg.type).check(cfg)
    allowed = module(cfg.type).METRICS
    if cfg.metric not in allowed:
        raise RecipeError(f"task.metric={cfg.metric!r}: expected one of {', '.join(allowed)} for task={cfg.type}")


def build(cfg):
    """The task of a training run, from its task config."""
    return module(cfg.type).TASK(cfg)


def of_model(config, where: str):
    """The task a trained model was trained for (saved in its config)."""
    saved = (getattr(config, "text_recipes", None) or {}).get("task")
    if saved is None:  # saved before tasks were recorded: classifiers only
        saved = {"single_label_classification": "single_label", "multi_label_classification": "multi_label"}.get(config.problem_type)
    if saved not in names():
        raise RecipeError(f"{where}: not a model trained by text-recipes (no task recorded in config.json)")
    return module(saved).TASK.from_model(config)
