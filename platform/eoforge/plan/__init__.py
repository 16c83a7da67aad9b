"""Plan stage: chip plans (GeoParquet, one row per chip) built once from a catalog search."""
