"""On the machine that runs `torchx run`: AppDefs, their checks, schedulers, named resources.
Imports no torch, transformers, ray or datasets."""
