"""Train stage: Ray Train TorchTrainer driver and the per-worker pretraining loop."""
