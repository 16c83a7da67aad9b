"""GeoTIFF files on disk: the header a STAC item needs, and one-band GDAL VRTs of a multi-band file.

:class:`RasterInfo` reads a file's header (no pixels); :func:`band_vrt` writes the XML of a VRT
that selects one band of the file on the file's own grid (CRS, transform, size, data type,
nodata), so reading the VRT is reading that band, pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio

from eoforge.errors import CatalogError

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class RasterInfo:
    """What a VRT and the STAC proj fields need of a GeoTIFF.

    Its STAC ``proj:`` fields are :func:`eoforge.demo.stac_writer.file_proj`.
    """

    path: Path
    width: int
    height: int
    count: int
    crs: str
    wkt: str
    transform: tuple[float, ...]  # a, b, c, d, e, f
    bounds: tuple[float, float, float, float]
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    blocks: tuple[tuple[int, int], ...]  # (rows, cols) per band

    @classmethod
    def read(cls, path: Path) -> RasterInfo:
        """Header of a GeoTIFF (no pixels read).

        Raises:
            CatalogError: unreadable, or no CRS.
        """
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise CatalogError(f"{path}: no CRS")
                return cls(
                    path.absolute(),
                    src.width,
                    src.height,
                    src.count,
                    src.crs.to_string(),
                    src.crs.to_wkt(),
                    tuple(src.transform)[:6],
                    tuple(src.bounds),
                    tuple(src.dtypes),
                    tuple(src.nodatavals),
                    tuple(src.block_shapes),
                )
        except rasterio.errors.RasterioIOError as exc:
            raise CatalogError(f"{path}: unreadable: {exc}") from None


def _nodata_text(value: float) -> str:
    if np.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def band_vrt(info: RasterInfo, band: int, description: str) -> str:
    """A one-band GDAL VRT selecting ``band`` (1-based) of ``info.path`` on the file's own grid."""
    if not 1 <= band <= info.count:
        raise CatalogError(f"{info.path}: no band {band} (the file has {info.count})")
    dtype = _GDAL_TYPES.get(info.dtypes[band - 1])
    if dtype is None:
        raise CatalogError(f"{info.path}: band {band} has unsupported data type {info.dtypes[band - 1]}")
    a, b, c, d, e, f = info.transform
    nodata = info.nodata[band - 1]
    block_rows, block_cols = info.blocks[band - 1]
    w, h = info.width, info.height
    nodata_xml = f"    <NoDataValue>{_nodata_text(nodata)}</NoDataValue>\n" if nodata is not None else ""
    return (
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">\n'
        f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(info.wkt)}</SRS>\n'
        f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>\n"
        f'  <VRTRasterBand dataType="{dtype}" band="1">\n'
        f"{nodata_xml}"
        f"    <Description>{escape(description)}</Description>\n"
        "    <SimpleSource>\n"
        f'      <SourceFilename relativeToVRT="0">{escape(str(info.path))}</SourceFilename>\n'
        f"      <SourceBand>{band}</SourceBand>\n"
        f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{dtype}" '
        f'BlockXSize="{block_cols}" BlockYSize="{block_rows}" />\n'
        f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />\n'
        f'      <DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />\n'
        "    </SimpleSource>\n"
        "  </VRTRasterBand>\n"
        "</VRTDataset>\n"
    )
