"""Entrypoint glue: Hydra main, config resolvers, process-group bootstrap."""
