"""Sweep stage: Ray Tune over fine-tuning jobs, results table, label-fraction plot, champion."""
