"""Downstream tasks: class sets and the targets derived from a chip's labels.

Three tasks, as in the seeds (shared reference ssl-methods.md §1.2):

- ``classification``: the chip's majority class among its labelled pixels;
- ``multilabel``: every class covering at least ``min_class_fraction`` of the labelled
  pixels, or, with ``label_source: item``, the item's own list of class names
  (BigEarthNet's CORINE labels);
- ``segmentation``: the per-pixel map, ``ignore_index`` where unlabelled or masked.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from eoforge.bands import DFC_CLASSES
from eoforge.config.finetune import TaskConfig
from eoforge.errors import ConfigError

#: BigEarthNet v1.0 CORINE Land Cover level-3 labels (43 classes), in the dataset's order.
BIGEARTHNET43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

#: BigEarthNet-19 nomenclature (Sumbul et al. 2021): class name -> the 43-class labels it merges.
#: Labels not listed (burnt areas, bare rock, dump/construction/mineral sites, ...) have no 19-class label.
BIGEARTHNET19: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards",
        "Fruit trees and berry plantations",
        "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    ),
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland", "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland", "Sclerophyllous vegetation"),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}


def class_names(classes: str | list[str]) -> tuple[str, ...]:
    """The class names of a named set (``dfc8``, ``bigearthnet43``, ``bigearthnet19``) or an explicit list."""
    if isinstance(classes, list):
        return tuple(classes)
    named = {"dfc8": DFC_CLASSES, "bigearthnet43": BIGEARTHNET43, "bigearthnet19": tuple(BIGEARTHNET19)}
    if classes not in named:
        raise ConfigError(f"task.classes: unknown class set {classes!r}; named sets are {sorted(named)}")
    return named[classes]


@functools.lru_cache(maxsize=8)
def _lookup_table(label_map: tuple[int, ...], ignore_index: int) -> np.ndarray:
    """uint8 [256]: raster value -> class id (ignore_index past the map's end), built once per map."""
    lut = np.full(256, ignore_index, np.uint8)
    lut[: len(label_map)] = label_map
    lut[ignore_index] = ignore_index
    lut.setflags(write=False)
    return lut


@dataclass(frozen=True)
class Task:
    """A resolved task: config plus its class names.

    Attributes:
        kind: ``classification`` / ``multilabel`` / ``segmentation``.
        classes: class names; class id k is ``classes[k]``.
        label_source: ``raster`` (label COG) or ``item`` (the item's list of class names).
        ignore_index: label value that is never a class (unlabelled, masked).
        min_class_fraction: multilabel presence threshold, share of labelled pixels.
        min_labelled_fraction: chips with fewer labelled pixels are left out of the task.
        label_map: raster value -> class id lookup (``None``: the raster holds class ids).
    """

    kind: str
    classes: tuple[str, ...]
    label_source: str
    ignore_index: int
    min_class_fraction: float
    min_labelled_fraction: float
    label_map: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> Task:
        """Resolve the class set of a task config."""
        names = class_names(cfg.classes)
        if cfg.label_source == "raster" and len(names) > 254:
            raise ConfigError("task.classes: a label raster holds at most 254 classes (uint8, 255 = ignore)")
        if cfg.label_map is not None:
            bad = sorted({v for v in cfg.label_map if v != cfg.ignore_index and v >= len(names)})
            if bad:
                raise ConfigError(
                    f"task.label_map: class ids {bad} are not in the {len(names)} classes "
                    f"(0..{len(names) - 1}, or ignore_index {cfg.ignore_index})"
                )
        return cls(
            cfg.kind,
            names,
            cfg.label_source,
            cfg.ignore_index,
            cfg.min_class_fraction,
            cfg.min_labelled_fraction,
            None if cfg.label_map is None else tuple(cfg.label_map),
        )

    def class_ids(self, label: np.ndarray) -> np.ndarray:
        """Raster values to class ids through ``label_map``. Shape: [H, W] -> [H, W] uint8 (ignore kept)."""
        if self.label_map is None:
            return label
        return _lookup_table(self.label_map, self.ignore_index)[np.clip(label.astype(np.int64), 0, 255)]

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    def pixel_counts(self, label: np.ndarray) -> np.ndarray:
        """Pixels per class of a label map. Shape: [H, W] uint8 -> [K] int64 (ignore and ids >= K dropped)."""
        flat = self.class_ids(label).reshape(-1).astype(np.int64)
        flat = flat[(flat != self.ignore_index) & (flat < self.num_classes)]
        return np.bincount(flat, minlength=self.num_classes)[: self.num_classes]

    def item_multi_hot(self, item_labels: str) -> np.ndarray:
        """Multi-hot [K] float32 from a JSON list of class names (43-class names map onto bigearthnet19)."""
        names = json.loads(item_labels) if item_labels else []
        index = {name: k for k, name in enumerate(self.classes)}
        if self.classes == tuple(BIGEARTHNET19):
            merged = {old: new for new, olds in BIGEARTHNET19.items() for old in olds}
            names = [merged[n] for n in names if n in merged]
        out = np.zeros(self.num_classes, np.float32)
        for name in names:
            if name in index:
                out[index[name]] = 1.0
        return out

    def usable(self, label: np.ndarray | None, item_labels: str) -> bool:
        """Whether a chip carries enough labels for this task."""
        if self.label_source == "item":
            return bool(self.item_multi_hot(item_labels).any())
        if label is None:
            return False
        return self.pixel_counts(label).sum() >= self.min_labelled_fraction * label.size

    def target(self, label: np.ndarray | None, item_labels: str) -> np.ndarray:
        """The training target of one chip.

        Returns:
            classification: int64 scalar class id; multilabel: float32 [K] multi-hot;
            segmentation: int64 [H, W] with ``ignore_index`` kept.
        """
        if self.label_source == "item":
            return self.item_multi_hot(item_labels)
        assert label is not None
        if self.kind == "segmentation":
            seg = self.class_ids(label).astype(np.int64)
            seg[seg >= self.num_classes] = self.ignore_index
            return seg
        counts = self.pixel_counts(label)
        if self.kind == "classification":
            return np.asarray(int(np.argmax(counts)), np.int64)
        return (counts >= self.min_class_fraction * max(int(counts.sum()), 1)).astype(np.float32) * (counts > 0)

    def stratum(self, label: np.ndarray | None, item_labels: str, class_freq: np.ndarray | None = None) -> int:
        """The class a chip is stratified by when drawing label fractions.

        Classification and segmentation: the majority class. Multilabel: the chip's rarest
        present class (by ``class_freq``, counts over the train split), so rare classes are kept.
        """
        if self.kind == "multilabel":
            present = np.flatnonzero(self.target(label, item_labels) > 0)
            if len(present) == 0:
                return -1
            freq = class_freq if class_freq is not None else np.ones(self.num_classes)
            return int(present[np.argmin(freq[present])])
        assert label is not None
        return int(np.argmax(self.pixel_counts(label)))
