"""Models: timm backbones per sensor, projection heads, the dual encoder."""
