"""Stage: predict — from a registered model to maps and embeddings as COGs + STAC."""
