"""Tracking stage: MLflow runs (config, plan hash, metrics) and the model registry."""
