"""What a reader of a chip plan needs to know without the planner: streamed columns, error wording.

Kept apart from :mod:`eoforge.plan.io` so that Ray Data's reading workers import it in milliseconds
(the planner pulls in geopandas and the STAC client, about a second per worker start).
"""

from __future__ import annotations

from eoforge.errors import CatalogError

#: Columns a Ray Data read of the plan needs (geometry is for people and GIS tools).
STREAM_COLUMNS = [
    "chip_id",
    "crs",
    "transform",
    "size_px",
    "s2_item",
    "s1_item",
    "s2_assets",
    "s1_assets",
    "scl_href",
    "label_href",
    "item_labels",
    "split",
    "s2_radiometry",
    "s1_product",
    "s1_units",
    "s1_calibration",
    "access",
    "provider",
]

WHAT = "chip plan"


def not_found(uri: str) -> CatalogError:
    """The error for a plan that is not there."""
    return CatalogError(f"{WHAT} {uri}: not found (build it with `eoforge plan`)")
