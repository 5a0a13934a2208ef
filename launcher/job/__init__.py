"""Inside each replica, before the recipe: run.py's command line, the torchrun wrapper, the Ray cluster bootstrap."""
