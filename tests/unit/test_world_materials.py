"""The demo world's materials: each class a mosaic of materials in parcels, mixed differently by region."""

from __future__ import annotations

import numpy as np
from eoforge.demo.materials import CLASS_OF_MATERIAL, MATERIALS, MATERIALS_OF_CLASS, s1_backscatter_db, s2_signature
from eoforge.demo.world import World


def _grid(x0: float, y0: float, side_m: float = 4000.0, step: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(0, side_m, step) + x0, np.arange(0, side_m, step) + y0)
    return xs, ys


def test_every_point_gets_a_material_of_its_own_class() -> None:
    w = World.from_seed(3)
    xs, ys = _grid(520_000.0, 4_990_000.0)
    classes = w.classes_at(xs, ys)
    materials = w.materials_at(xs, ys, classes)
    assert np.array_equal(CLASS_OF_MATERIAL[materials], classes)
    # most classes present use more than one of their materials
    mixed = [c for c in np.unique(classes) if len(np.unique(materials[classes == c])) > 1]
    assert len(mixed) >= len(np.unique(classes)) // 2


def test_materials_come_in_parcels_not_salt_and_pepper() -> None:
    w = World.from_seed(0)
    xs, ys = _grid(520_000.0, 4_990_000.0, side_m=2000.0, step=10.0)
    classes = w.classes_at(xs, ys)
    materials = w.materials_at(xs, ys, classes)
    same_class = classes[:, 1:] == classes[:, :-1]
    same_material = materials[:, 1:] == materials[:, :-1]
    # neighbours 10 m apart in one class mostly share the material (parcels are 50-300 m)
    assert same_material[same_class].mean() > 0.85


def test_the_material_mix_of_a_class_changes_between_regions() -> None:
    w = World.from_seed(0)
    crop = MATERIALS_OF_CLASS[4]
    shares = []
    for x0 in (520_000.0, 560_000.0, 600_000.0, 640_000.0, 680_000.0):
        xs, ys = _grid(x0, 4_990_000.0, side_m=6000.0, step=30.0)
        classes = w.classes_at(xs, ys)
        m = w.materials_at(xs, ys, classes)[classes == 4]
        shares.append(np.bincount(m, minlength=len(MATERIALS))[list(crop)] / max(m.size, 1))
    summer = [s[0] for s in shares]
    assert max(summer) - min(summer) > 0.2  # one region's croplands are mostly summer crops, another's not


def test_land_cover_does_not_depend_on_the_materials() -> None:
    """Materials are drawn after the land-cover fields: a seed's class map is what it was before them."""
    w = World.from_seed(0)
    xs, ys = _grid(520_000.0, 4_990_000.0, side_m=1000.0)
    before = w.classes_at(xs, ys)
    w.materials_at(xs, ys, before)
    assert np.array_equal(before, w.classes_at(xs, ys))


def test_look_alikes_are_close_in_s2_and_apart_in_s1() -> None:
    """A park looks like a meadow and a ploughed field like bare soil to S2; the radar tells the park apart."""
    names = [m.name for m in MATERIALS]
    s2, s1 = s2_signature(200.0), s1_backscatter_db(200.0)
    park, meadow = names.index("parks and gardens"), names.index("green meadow")
    ploughed, soil = names.index("ploughed field"), names.index("bright sand and soil")

    def rel(a: int, b: int) -> float:
        return float(np.abs(s2[a] - s2[b]).mean() / s2[b].mean())

    assert rel(park, meadow) < 0.1 and rel(ploughed, soil) < 0.35
    assert s1[park, 0] - s1[meadow, 0] > 5.0  # double bounce from the buildings around the park
    # winter cereals peak in May, summer crops in July
    summer, winter = names.index("summer crop"), names.index("winter cereal")
    may = s2_signature(135.0)
    assert may[winter, 7] > may[summer, 7]
