"""The retrieval protocols as data: which images are queries, which train, which form the database.

One row per protocol of the benchmark table (listed in docs/usage.md, "Protocols"), plus the embedded ``digits`` default,
``digits_hard`` (derived from it, synthetic: see :class:`Distortion`) and
two generic layouts, ``list:<dir>`` (DeepHash-style list files) and ``folder:<dir>`` (one
sub-folder per class). Nothing here touches the disk; :mod:`hybridhash.data.load` builds the sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from ..errors import DataError

# A per-class size: an int is a count of images, a float in (0, 1) a fraction of the class.
Count = Union[int, float]

# how the database is formed from the per-class draw
DATABASE_RULES = (
    "rest",       # every image that is neither query nor train (train and database disjoint)
    "non_query",  # every image that is not a query (train is a subset of the database)
    "train",      # the training images themselves
    "list",       # database.txt of a list-file directory
)

# list-file names of a DeepHash-style directory, by set
LIST_FILES = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}


@dataclass(frozen=True)
class Distortion:
    """A derived protocol's seeded distortion of its searched images (:mod:`hybridhash.data.distort`).

    Every image is resampled to ``size`` x ``size`` px (bilinear, the 8x8 source scaled up); the
    queries, the database and val then go through, per image: an affine map about the centre
    (rotation up to ``rotation`` degrees, scale in [1 - ``scale``, 1 + ``scale``], horizontal shear up
    to ``shear``, translation up to ``shift`` source pixels on each axis), a blank (black) square of
    ``occlusion`` px, and integer noise uniform in [-``noise``, ``noise``] grey levels (of 255).
    """

    # the defaults are digits_hard's (docs/compare/table_hard.md: how they were chosen)
    size: int = 32
    rotation: float = 20.0
    scale: float = 0.15
    shear: float = 0.2
    shift: float = 0.75
    occlusion: int = 8
    noise: int = 32


@dataclass(frozen=True)
class ProtocolSpec:
    """One protocol: its label space, its metric and how its sets are drawn.

    ``query``/``train`` are per-class sizes for the per-class kinds (digits, cifar, folder);
    ``train=None`` there means every image that is not a query. List-file protocols take their
    sets from the files and only quote the published sizes in ``published``.
    """

    name: str
    kind: str  # "digits" | "cifar" | "list" | "folder" | "images"
    n_class: Optional[int]  # None: read from the data (list:, folder:)
    multi_label: Optional[bool]  # None: read from the data
    topk: Optional[int]  # mAP@topk; None means over the whole database ("all")
    database: str
    query: Optional[Count] = None
    train: Optional[Count] = None
    published: Dict[str, int] = field(default_factory=dict)
    # memory-bank rows of the original code (the loss's quirk); None: the training set's size
    original_bank_rows: Optional[int] = None
    description: str = ""
    # derived protocols: the seeded distortion of queries, database and val (train stays clean)
    distortion: Optional[Distortion] = None

    @property
    def per_class(self) -> bool:
        return self.kind in ("digits", "cifar", "folder", "images")

    @property
    def topk_label(self) -> str:
        return "all" if self.topk is None else str(self.topk)


_CIFAR = dict(kind="cifar", n_class=10, multi_label=False, topk=None, original_bank_rows=10000)
_LISTS = dict(kind="list", database="list")

PROTOCOLS: Dict[str, ProtocolSpec] = {p.name: p for p in [
    ProtocolSpec("digits", "digits", 10, False, None, "non_query", query=20, train=50,
                 published=dict(query=200, train=500, database=1597),
                 description="scikit-learn's bundled 8x8 digits (1797 images), no download"),
    ProtocolSpec("digits_hard", "digits", 10, False, None, "rest", query=20, train=15,
                 published=dict(query=200, train=150, database=1447), distortion=Distortion(),
                 description="derived from digits, synthetic: 15 clean training images per class at 32 px; queries, "
                             "database and val under a seeded random affine map (rotation <= 20 deg, scale 0.85-1.15, "
                             "shear <= 0.2, shift <= 0.75 px of 8), an 8x8 px blank square and noise +-32 (no download)"),
    ProtocolSpec("cifar10", database="rest", query=100, train=500,
                 published=dict(query=1000, train=5000, database=54000),
                 description="CIFAR-10, 100 queries and 500 training images per class; database the other 54000",
                 **_CIFAR),
    ProtocolSpec("cifar10-1", database="non_query", query=100, train=500,
                 published=dict(query=1000, train=5000, database=59000),
                 description="CIFAR-10, 100 queries per class; database the other 59000, 500 per class of it train",
                 **_CIFAR),
    ProtocolSpec("cifar10-2", database="train", query=1000, train=None,
                 published=dict(query=10000, train=50000, database=50000),
                 description="CIFAR-10, 1000 queries per class; the other 50000 train and form the database",
                 **_CIFAR),
    ProtocolSpec("nuswide_21", n_class=21, multi_label=True, topk=5000,
                 published=dict(query=2100, train=10500),
                 description="NUS-WIDE, the 21 most frequent concepts (list files)", **_LISTS),
    ProtocolSpec("nuswide_21_m", n_class=21, multi_label=True, topk=5000,
                 published=dict(query=2100, train=10500),
                 description="NUS-WIDE, 21 concepts, the '_m' list files", **_LISTS),
    ProtocolSpec("nuswide_81_m", n_class=81, multi_label=True, topk=5000,
                 published=dict(query=5000, train=10000),
                 description="NUS-WIDE, all 81 concepts (list files)", **_LISTS),
    ProtocolSpec("coco", n_class=80, multi_label=True, topk=5000,
                 published=dict(query=5000, train=10000),
                 description="MS-COCO, 80 categories (list files)", **_LISTS),
    ProtocolSpec("imagenet", n_class=100, multi_label=False, topk=1000,
                 published=dict(query=5000, train=13000, database=128503),
                 description="ImageNet, 100 classes (list files; single-label stored multi-hot)", **_LISTS),
    ProtocolSpec("list", n_class=None, multi_label=None, topk=None,
                 description="any directory of train.txt / test.txt / database.txt list files", **_LISTS),
    ProtocolSpec("folder", "folder", None, False, None, "non_query", query=0.1, train=0.5,
                 description="one sub-folder per class; per class 10% queries, the rest the database, "
                             "half of that train"),
    ProtocolSpec("images", "images", None, False, None, "non_query", query=0.1, train=0.5,
                 description="images without labels: every image under a folder, or the paths of a list file; "
                             "10% queries, the rest the database, half of that train (for unsupervised methods "
                             "and training-free baselines; scores need no labels)"),
]}
# the protocols whose name takes a directory (or, for images:, a list file of paths)
WITH_PATH = ("list", "folder", "images")


def list_protocols() -> List[str]:
    """Names accepted by :func:`~hybridhash.data.load_protocol` (``list``, ``folder`` and ``images``
    also as ``list:<dir>``, ``folder:<dir>``, ``images:<dir or file>``)."""
    return list(PROTOCOLS)


def get_spec(name: str) -> Tuple[ProtocolSpec, Optional[str]]:
    """Look up a protocol by name. Returns ``(spec, directory)``; the directory is the part after
    ``list:``, ``folder:`` or ``images:`` (None otherwise)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    base, sep, directory = name.partition(":")
    if sep:
        if base not in WITH_PATH:
            raise DataError(f"unknown dataset {name!r}: only list:<dir>, folder:<dir> and images:<dir or file> "
                            "take a path")
        if not directory:
            raise DataError(f"dataset {name!r} names no directory")
        return PROTOCOLS[base], directory
    spec = PROTOCOLS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(list_protocols())}, list:<dir>, folder:<dir>, "
                        "images:<dir or file>")
    return spec, None
