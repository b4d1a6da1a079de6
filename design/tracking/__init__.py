"""Experiment tracking with MLflow (store, run contents, model registry)."""
