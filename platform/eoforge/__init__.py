"""eoforge: self-supervised pretraining on co-located Sentinel-1 / Sentinel-2 imagery."""

from eoforge.redact import install_log_redaction

__version__ = "0.1.0"

# every process that runs eoforge code (CLI, job drivers, Ray workers) logs no signed URL and no
# embedded credential, whichever library writes the line (GDAL quotes the URLs it fails on)
install_log_redaction()
