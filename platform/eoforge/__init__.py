"""eoforge: self-supervised pretraining on co-located Sentinel-1 / Sentinel-2 imagery."""

__version__ = "0.1.0"
