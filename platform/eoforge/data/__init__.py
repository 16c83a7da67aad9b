"""Data stage: read chip windows from COGs onto one grid, mask, normalise, stream with Ray Data."""
