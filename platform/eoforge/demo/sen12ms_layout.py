"""SEN12MS and DFC2020 as published: their folder layouts, class tables, dates, and the patches found on disk.

Layouts read, as distributed (``src`` is the folder holding the ``ROIs*`` folders, or one of them):

- ``sen12ms``: ``ROIs1158_spring/s2_<scene>/ROIs1158_spring_s2_<scene>_p<patch>.tif`` (13 bands, uint16
  L1C TOA reflectance x 10000, order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12, all at 10 m),
  ``s1_<scene>/..._s1_<scene>_p<patch>.tif`` (2 bands, float32 sigma0 in dB: VV, VH) and
  ``lc_<scene>/..._lc_<scene>_p<patch>.tif`` (4 bands, uint16 MODIS land cover; band 1 = IGBP 1..17).
  Seasons ``ROIs1158_spring``, ``ROIs1868_summer``, ``ROIs1970_fall``, ``ROIs2017_winter``.
- ``dfc2020``: ``ROIs0000_validation/{s2,s1,dfc}_validation/ROIs0000_validation_{s2,s1,dfc}_0_p<n>.tif``
  and ``ROIs0000_test/{s2,s1,dfc}_0/ROIs0000_test_{s2,s1,dfc}_0_p<n>.tif``; the same S2/S1 files, and
  ``dfc`` = 1 band of DFC2020 classes 1..10 (high-resolution labels).

Every file of a patch is 256 x 256 px at 10 m on the same UTM grid.

Dates. The files carry no acquisition date, and SEN12MS S2 patches are cloud-free mosaics of a
season's acquisitions, so there is no single date. Items get a fixed date per season, the
15th of the season's middle month (:data:`SEASON_DATES`), with ``start_datetime``/``end_datetime``
spanning the meteorological season (winter = Dec 2016 .. Feb 2017, the others 2017); DFC2020 has
no season and gets :data:`DFC2020_DATE` (a placeholder). S1 and S2 of a patch get the same
date, so they pair with ``pairing.max_days: 0``. ``eo:cloud_cover`` is 0 (the S2 patches are
cloud-free composites; an assumption, noted in the collection description).

:func:`find_patches` lists a folder's patches; :mod:`eoforge.demo.sen12ms` writes their STAC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from eoforge.bands import S2_BANDS
from eoforge.errors import CatalogError

LAYOUTS = ("sen12ms", "dfc2020")

#: SEN12MS / DFC2020 S2 band order (13 L1C bands); eoforge band name -> 1-based band index in the file.
S2_FILE_BANDS: tuple[str, ...] = tuple("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split())
S2_BAND_INDEX: dict[str, int] = {b.name: S2_FILE_BANDS.index(b.name) + 1 for b in S2_BANDS}
#: S1 file band order: VV, VH (sigma0, dB).
S1_BAND_INDEX: dict[str, int] = {"vv": 1, "vh": 2}

#: MODIS IGBP classes (SEN12MS ``lc`` band 1), raw value -> name.
IGBP_CLASSES: dict[int, str] = {
    1: "Evergreen Needleleaf Forests",
    2: "Evergreen Broadleaf Forests",
    3: "Deciduous Needleleaf Forests",
    4: "Deciduous Broadleaf Forests",
    5: "Mixed Forests",
    6: "Closed Shrublands",
    7: "Open Shrublands",
    8: "Woody Savannas",
    9: "Savannas",
    10: "Grasslands",
    11: "Permanent Wetlands",
    12: "Croplands",
    13: "Urban and Built-up Lands",
    14: "Cropland/Natural Vegetation Mosaics",
    15: "Permanent Snow and Ice",
    16: "Barren",
    17: "Water Bodies",
}
#: Simplified IGBP (DFC2020) classes, raw value -> name.
DFC10_CLASSES: dict[int, str] = {
    1: "Forest",
    2: "Shrubland",
    3: "Savanna",
    4: "Grassland",
    5: "Wetlands",
    6: "Croplands",
    7: "Urban/Built-up",
    8: "Snow/Ice",
    9: "Barren",
    10: "Water",
}
#: IGBP code (index 0..17) -> DFC2020 class 1..10 (0: none), as in SSLTransformerRS / dfc2020_baseline.
IGBP_TO_DFC10: tuple[int, ...] = (0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 6, 8, 9, 10)
#: DFC2020 class 1..10 (index) -> the 8-class set ``dfc8`` (Savanna, Snow/Ice and 0 -> 255 ignore).
DFC10_TO_DFC8: tuple[int, ...] = (255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7)
#: IGBP code (index 0..17) -> ``dfc8`` class id: ``task.label_map`` for SEN12MS labels.
IGBP_TO_DFC8: tuple[int, ...] = tuple(DFC10_TO_DFC8[d] for d in IGBP_TO_DFC10)

#: Item date of each SEN12MS season (mid-season) and the season's interval (start, end).
SEASON_DATES: dict[str, tuple[datetime, datetime, datetime]] = {
    "winter": (
        datetime(2017, 1, 15, tzinfo=UTC),
        datetime(2016, 12, 1, tzinfo=UTC),
        datetime(2017, 2, 28, 23, 59, 59, tzinfo=UTC),
    ),
    "spring": (
        datetime(2017, 4, 15, tzinfo=UTC),
        datetime(2017, 3, 1, tzinfo=UTC),
        datetime(2017, 5, 31, 23, 59, 59, tzinfo=UTC),
    ),
    "summer": (
        datetime(2017, 7, 15, tzinfo=UTC),
        datetime(2017, 6, 1, tzinfo=UTC),
        datetime(2017, 8, 31, 23, 59, 59, tzinfo=UTC),
    ),
    "fall": (
        datetime(2017, 10, 15, tzinfo=UTC),
        datetime(2017, 9, 1, tzinfo=UTC),
        datetime(2017, 11, 30, 23, 59, 59, tzinfo=UTC),
    ),
}
#: DFC2020 items (validation and test): the files carry no date; a placeholder, not an acquisition date.
DFC2020_DATE = datetime(2020, 1, 1, tzinfo=UTC)

_NAME = re.compile(r"^(?P<roi>ROIs\d+_[A-Za-z]+)_s2_(?P<scene>[A-Za-z0-9]+)_p(?P<patch>\d+)\.tif$")


@dataclass(frozen=True)
class Layout:
    """Names of one published layout."""

    name: str
    label_prefix: str  # folder/file token of the label files: "lc" or "dfc"
    label_what: str
    label_values: dict[int, str]

    def collection(self, kind: str) -> str:
        """Collection id: ``<layout>-s2``, ``<layout>-s1``, ``<layout>-labels``."""
        return f"{self.name}-{kind}"


#: The layouts by name.
LAYOUT_BY_NAME = {
    "sen12ms": Layout("sen12ms", "lc", "MODIS land cover, band 1 = IGBP 1..17 (raw values)", IGBP_CLASSES),
    "dfc2020": Layout("dfc2020", "dfc", "DFC2020 high-resolution labels, classes 1..10 (raw values)", DFC10_CLASSES),
}


@dataclass(frozen=True)
class Patch:
    """The files of one patch (S2, S1, label) and where it belongs."""

    roi: str  # e.g. ROIs1158_spring, ROIs0000_test
    scene: str
    patch: int
    s2: Path
    s1: Path
    label: Path

    @property
    def group(self) -> str:
        """Season (SEN12MS) or split (DFC2020): the word after ``ROIsNNNN_``."""
        return self.roi.split("_", 1)[1]

    def item_id(self, token: str) -> str:
        """Item id, the file's stem: ``ROIs1158_spring_s2_1_p30``."""
        return f"{self.roi}_{token}_{self.scene}_p{self.patch}"


# ----------------------------------------------------------------------------------------- discovery


def _roi_dirs(src: Path) -> list[Path]:
    if re.match(r"^ROIs\d+_", src.name) and src.is_dir():
        return [src]
    return sorted(p for p in src.glob("ROIs*_*") if p.is_dir())


def find_patches(src: Path, layout: Layout) -> tuple[list[Patch], list[dict[str, str]]]:
    """Every complete patch under ``src`` (sorted), and the incomplete ones with the reason.

    Raises:
        CatalogError: ``src`` holds no ``ROIs*/s2_*/*.tif``.
    """
    patches: list[Patch] = []
    skipped: list[dict[str, str]] = []
    for roi_dir in _roi_dirs(src):
        for s2_dir in sorted(p for p in roi_dir.glob("s2_*") if p.is_dir()):
            suffix = s2_dir.name[len("s2") :]  # "_1", "_validation", "_0"
            for s2 in s2_dir.glob("*.tif"):
                m = _NAME.match(s2.name)
                if m is None or m["roi"] != roi_dir.name:
                    skipped.append({"file": str(s2), "reason": "name: not <ROI>_s2_<scene>_p<n>.tif"})
                    continue
                roi, scene, n = m["roi"], m["scene"], int(m["patch"])
                s1 = roi_dir / f"s1{suffix}" / f"{roi}_s1_{scene}_p{n}.tif"
                lp = layout.label_prefix
                label = roi_dir / f"{lp}{suffix}" / f"{roi}_{lp}_{scene}_p{n}.tif"
                missing = [str(p) for p in (s1, label) if not p.is_file()]
                if missing:
                    skipped.append({"file": str(s2), "reason": f"missing: {', '.join(missing)}"})
                    continue
                patches.append(Patch(roi, scene, n, s2, s1, label))
    if not patches and not skipped:
        raise CatalogError(
            f"{layout.name} folder {src}: no ROIs*/s2_*/*.tif found (expected e.g. "
            + (
                "ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif)"
                if layout.name == "sen12ms"
                else "ROIs0000_test/s2_0/ROIs0000_test_s2_0_p0.tif)"
            )
        )
    order = sorted(patches, key=lambda p: (p.roi, int(p.scene) if p.scene.isdigit() else -1, p.scene, p.patch))
    return order, skipped


def patch_dates(patch: Patch, layout: Layout) -> tuple[datetime, dict[str, str]]:
    """(item datetime, extra properties) of a patch: the season's date, or the DFC2020 placeholder."""
    if layout.name == "dfc2020":
        return DFC2020_DATE, {"eoforge:datetime_note": "placeholder: DFC2020 files carry no acquisition date"}
    if patch.group not in SEASON_DATES:
        raise CatalogError(f"{patch.s2}: unknown SEN12MS season {patch.group!r}; expected {sorted(SEASON_DATES)}")
    when, start, end = SEASON_DATES[patch.group]
    return when, {
        "start_datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eoforge:datetime_note": "fixed per season (mid-season); S2 patches are seasonal cloud-free mosaics",
    }
