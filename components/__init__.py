"""TorchX components of text-recipes. Each builds an AppDef that runs `run.py <command>` under torchrun."""
