"""Code that runs inside a replica: data, model, metrics and the train/evaluate loops."""
