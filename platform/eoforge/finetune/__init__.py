"""Fine-tuning stage: labelled chips, label-fraction subsets, task heads, the Ray Train loop, the driver."""
