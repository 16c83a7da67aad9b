"""SSL objectives, one per file, found by name through :mod:`eoforge.ssl.objectives`."""
