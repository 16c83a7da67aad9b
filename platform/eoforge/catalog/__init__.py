"""Catalog stage: STAC search (API or static), provider profiles, S1<->S2 pairing, demo data."""
