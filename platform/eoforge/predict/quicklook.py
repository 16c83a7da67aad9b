"""A quicklook PNG of a predict run: the class map of one source item beside a reference map.

The output tiles of the item are loaded back with odc-stac (as a user would load them); the
reference (e.g. a label COG) is read onto the same grid with nearest resampling. Both are drawn
with the class map's own palette (from the COG) and a legend of the class names (from the items).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def load_class_map(collection: str, item_prefix: str | None = None) -> tuple[Any, list[dict[str, Any]], str]:
    """(class map as an xarray DataArray [y, x], ``classification:classes``, S2 item) of one item's tiles.

    ``item_prefix`` picks the source item (the first item of the collection by default).
    """
    import pystac
    from odc.stac import load

    items = sorted(pystac.Collection.from_file(collection).get_items(), key=lambda i: i.id)
    if not items:
        raise ValueError(f"{collection}: no items")
    prefix = item_prefix or items[0].id.rsplit("-", 2)[0]
    chosen = [i for i in items if i.id.startswith(prefix)]
    if not chosen:
        raise ValueError(f"{collection}: no item starts with {prefix!r}")
    classes = chosen[0].assets["classes"].extra_fields.get("classification:classes", [])
    ds = load(chosen, bands=["classes"], groupby="solar_day", chunks=None)
    return ds["classes"].isel(time=0), classes, prefix


def reference_on(grid: Any, href: str) -> np.ndarray:
    """A single-band raster read onto a class map's grid (nearest), uint8 [y, x]; 255 outside."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    geobox = grid.odc.geobox
    with (
        rasterio.open(href) as src,
        WarpedVRT(
            src,
            crs=str(geobox.crs),
            transform=geobox.affine,
            width=geobox.width,
            height=geobox.height,
            resampling=Resampling.nearest,
            nodata=255,
        ) as vrt,
    ):
        return vrt.read(1)


def quicklook(collection: str, out: str | Path, reference: str | None = None, item_prefix: str | None = None) -> Path:
    """Draw the class map (and the reference beside it) to ``out`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    pred, classes, item = load_class_map(collection, item_prefix)
    named = [c for c in classes if not c.get("nodata")]
    colours = ["#" + c.get("color_hint", "808080") for c in named]
    cmap = ListedColormap(colours or ["#808080"])
    panels = [("prediction", pred.values)]
    if reference:
        panels.append(("reference", reference_on(pred, reference)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 2, 5), squeeze=False)
    for ax, (title, arr) in zip(axes[0], panels, strict=True):
        shown = np.ma.masked_where(arr >= len(named), arr)
        ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=len(named) - 0.5, interpolation="nearest")
        if title == "reference" and named:
            both = (arr < len(named)) & (panels[0][1] < len(named))
            agree = float((arr[both] == panels[0][1][both]).mean()) if both.any() else float("nan")
            title = f"reference (pixel agreement {agree:.1%})"
        ax.set_title(title)
        ax.set_axis_off()
    handles = [Patch(color=c, label=n.get("title", n["name"])) for c, n in zip(colours, named, strict=True)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{item}: class map, 10 m", fontsize=11)
    fig.subplots_adjust(right=0.8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
