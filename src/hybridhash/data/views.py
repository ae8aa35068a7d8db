"""Two augmented views of each training image, for the methods that learn by telling the views of one
image from those of the others (docs/methods.md, cibhash).

A method declares the augmentation it was published with as a :class:`TwoViewAugmentation` (its
``views``); :func:`two_view_transform` builds it for a model's ``preprocess``: as published when the
model's image size is the published one, else :meth:`TwoViewAugmentation.scaled` to it.

Scaling to small images (the ``scaled`` rule): the crop keeps its range of areas (a fraction of the
image, so it does not depend on the size); flip, colour jitter and grayscale do not depend on the
size either; the blur's sigma is in pixels, so its range is scaled by size / published size, and its
kernel likewise (nearest odd number, at least 3). Below :data:`MIN_BLUR_EDGE` px there is no blur:
at 32 px the scaled sigma is at most 2 x 32 / 224 = 0.29 px, where a 3-tap Gaussian puts 0.3% of the
weight on each neighbour, so the published blur would leave the image as it is.

Digit images (the ``digits`` pipeline family) are never flipped, as in their training pipeline: a
mirrored digit is another glyph.

The crop is what makes the two views of an image differ in content; :func:`min_view_edge` is the
smallest image edge at which the narrowest crop leaves out a pixel. :class:`SeededCopies` makes one
fixed copy of each image (the label-free validation score, :mod:`hybridhash.metrics.copies`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import ConfigError

# smallest image edge that keeps a blur in a scaled augmentation (see the module docstring)
MIN_BLUR_EDGE = 64


def _odd(value: float) -> int:
    """The odd integer nearest to ``value`` (ties to the larger)."""
    return 2 * int((value - 1) / 2 + 0.5) + 1


@dataclass(frozen=True)
class TwoViewAugmentation:
    """One view's random augmentation at the image edge ``size`` it was published for; a training
    image goes through it twice, independently.

    size: edge of the square crop (px). crop_scale: range of the crop's share of the image area
    (RandomResizedCrop, aspect ratio 3/4 to 4/3). flip_p: horizontal flip probability. jitter:
    brightness, contrast, saturation, hue of a colour jitter applied with probability jitter_p.
    grayscale_p: probability of a grayscale copy. blur_kernel: odd edge of a Gaussian blur (0: no
    blur) with sigma drawn uniformly from blur_sigma (px), applied with probability blur_p.
    """

    size: int
    crop_scale: Tuple[float, float]
    flip_p: float
    jitter: Tuple[float, float, float, float]
    jitter_p: float
    grayscale_p: float
    blur_kernel: int
    blur_sigma: Tuple[float, float]
    blur_p: float

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not (isinstance(self.size, int) and self.size >= 1):
            raise ConfigError(f"views: size must be a positive integer, got {self.size!r}")
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"views: crop_scale must be 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"views: {name} must be a probability, got {getattr(self, name)!r}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ConfigError(f"views: jitter must be 4 values >= 0, hue <= 0.5, got {self.jitter}")
        if self.blur_kernel < 0 or (self.blur_kernel and self.blur_kernel % 2 == 0):
            raise ConfigError(f"views: blur_kernel must be 0 or odd, got {self.blur_kernel}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"views: blur_sigma must be 0 < low <= high, got {self.blur_sigma}")

    def scaled(self, size: int) -> "TwoViewAugmentation":
        """The augmentation for images of ``size`` px, by the rule of the module docstring."""
        if size == self.size:
            return self
        factor = size / self.size
        sigma = (self.blur_sigma[0] * factor, self.blur_sigma[1] * factor)
        kernel = max(3, _odd(self.blur_kernel * factor)) if self.blur_kernel and size >= MIN_BLUR_EDGE else 0
        return dataclasses.replace(self, size=size, blur_kernel=kernel, blur_sigma=sigma)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class TwoViews:
    """image -> (view 1, view 2): ``transform`` applied twice, independently (its randomness is
    torch's, so a seeded data-loading worker draws the same views again)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> Tuple[Any, Any]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def view_augmentation(preprocess: Dict[str, Any], augmentation: TwoViewAugmentation,
                      dataset: Any = None) -> TwoViewAugmentation:
    """The augmentation as it applies to a model of ``preprocess``: scaled to its image size, and
    without the flip for digits (see the module docstring); ``dataset`` as in ``build_transform``."""
    from .transforms import _checked, pipeline_for

    p = _checked(preprocess)
    aug = augmentation.scaled(p["img_size"])
    if (p["pipeline"] or pipeline_for(dataset)) == "digits":
        aug = dataclasses.replace(aug, flip_p=0.0)
    return aug


def view_transform(preprocess: Dict[str, Any], augmentation: TwoViewAugmentation, dataset: Any = None) -> Callable:
    """PIL RGB image -> float32 (3, img_size, img_size): one random view by
    :func:`view_augmentation`, normalised with the model's mean and std."""
    import torch
    from torchvision.transforms import v2

    from .transforms import _checked

    p = _checked(preprocess)
    a = view_augmentation(preprocess, augmentation, dataset)
    steps = [v2.RandomResizedCrop(a.size, scale=a.crop_scale, interpolation=p["interpolation"], antialias=True)]
    if a.flip_p:
        steps.append(v2.RandomHorizontalFlip(a.flip_p))
    if a.jitter_p:
        steps.append(v2.RandomApply([v2.ColorJitter(*a.jitter)], p=a.jitter_p))
    if a.grayscale_p:
        steps.append(v2.RandomGrayscale(a.grayscale_p))
    if a.blur_kernel and a.blur_p:
        steps.append(v2.RandomApply([v2.GaussianBlur(a.blur_kernel, a.blur_sigma)], p=a.blur_p))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(p["mean"], p["std"]),
              v2.ToPureTensor()]
    return v2.Compose(steps)


def two_view_transform(preprocess: Dict[str, Any], augmentation: TwoViewAugmentation,
                       dataset: Any = None) -> TwoViews:
    """PIL RGB image -> (view 1, view 2), each float32 (3, img_size, img_size) (:func:`view_transform`)."""
    return TwoViews(view_transform(preprocess, augmentation, dataset))


def narrowest_crop(augmentation: TwoViewAugmentation) -> float:
    """The shorter edge of the narrowest crop the augmentation can draw, as a share of the image's
    edge: area ``a`` = the low end of ``crop_scale`` at the aspect ratio (within 3/4 to 4/3) that keeps
    the crop inside the image and makes it narrowest: sqrt(3a/4) for a <= 3/4, else a (at ratio a)."""
    a = augmentation.crop_scale[0]
    return (0.75 * a) ** 0.5 if a <= 0.75 else a


def min_view_edge(augmentation: TwoViewAugmentation) -> Optional[int]:
    """The smallest image edge (px) at which the two views of an image can differ in their crop: the
    narrowest crop must leave out at least one pixel of the edge, size (1 - narrowest) >= 1. None
    when no size can (a crop of the whole image only)."""
    f = narrowest_crop(augmentation)
    return None if f >= 1 else math.ceil(1 / (1 - f) - 1e-9)


# the augmentation of the copies that the label-free validation score retrieves (metrics.copies): the
# two-view augmentation of contrastive hashing (cibhash's, 224 px), scaled to the model like any other
COPY_AUGMENTATION = TwoViewAugmentation(size=224, crop_scale=(0.5, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1),
                                        jitter_p=0.7, grayscale_p=0.2, blur_kernel=3, blur_sigma=(0.1, 2.0),
                                        blur_p=0.5)


class SeededCopies:
    """One augmented copy of each image of ``dataset`` (items ``(image, ...)`` or a ``.image(i)``
    method): item i is ``(transform(image i),)``, the augmentation's randomness seeded by
    ``seed_of(i)``, so the copy of an image is the same on every call, in any order."""

    def __init__(self, dataset: Any, transform: Callable, seed_of: Callable[[int], int]) -> None:
        self.dataset, self.transform, self.seed_of = dataset, transform, seed_of

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        import torch

        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(self.seed_of(int(i)))
            return (self.transform(self.dataset.image(int(i))),)


def copy_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image ``index``'s copy under run seed ``seed`` (well mixed: neighbouring
    seeds and rows give unrelated draws)."""
    import numpy as np

    state = np.random.SeedSequence([int(seed), int(index), 0x636F7079]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_copies(dataset: Any, preprocess: Dict[str, Any], seed: int, dataset_name: Any = None) -> SeededCopies:
    """One copy of each image of ``dataset`` by :data:`COPY_AUGMENTATION` at the size of ``preprocess``,
    image i's drawn from :func:`copy_seed` (seed, i): items ``(float32 (3, S, S),)``."""
    return SeededCopies(dataset, view_transform(preprocess, COPY_AUGMENTATION, dataset_name),
                        lambda i: copy_seed(seed, i))
