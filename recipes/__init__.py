"""Code that runs inside a replica: data, models, tasks (recipes/tasks/) and the train, evaluate and infer loops."""
