"""The data side of the methods without labels: the two-view augmentation (published at 224 px,
scaled to small images by the rule of docs/methods.md, cibhash) and the pixel targets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from hybridhash.data.targets import mean_image, pixel_targets
from hybridhash.data.views import (MIN_BLUR_EDGE, TwoViewAugmentation, TwoViews, two_view_transform,
                                   view_augmentation, view_transform)
from hybridhash.errors import ConfigError, DataError
from hybridhash.methods import create_method

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
VIEWS = create_method("cibhash", bits=16, n_class=1, num_train=1).views


def pre(size, pipeline="cifar"):
    return {"img_size": size, "resize": size, "mean": MEAN, "std": STD, "pipeline": pipeline}


def steps_of(transform):
    """{step type: step} of a Compose, looking inside RandomApply."""
    found = {}
    for t in transform.transforms:
        found[type(t)] = t
        for inner in getattr(t, "transforms", []):
            found[type(inner)] = inner
    return found


def test_the_published_pipeline_at_224_px():
    assert view_augmentation(pre(224), VIEWS) == VIEWS
    steps = steps_of(view_transform(pre(224), VIEWS))
    crop = steps[v2.RandomResizedCrop]
    assert crop.size == (224, 224) and tuple(crop.scale) == (0.5, 1.0)
    assert steps[v2.RandomHorizontalFlip].p == 0.5
    jitter = steps[v2.ColorJitter]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4),
                                                                                   (-0.1, 0.1))
    applied = [t for t in view_transform(pre(224), VIEWS).transforms if isinstance(t, v2.RandomApply)]
    assert [a.p for a in applied] == [0.7, 0.5]  # the jitter, then the blur
    assert steps[v2.RandomGrayscale].p == 0.2
    blur = steps[v2.GaussianBlur]
    assert list(blur.kernel_size) == [3, 3] and list(blur.sigma) == [0.1, 2.0]
    assert list(steps[v2.Normalize].mean) == MEAN


@pytest.mark.parametrize("size", [32, 63, 64, 100, 448])
def test_scaled_to_the_image_size(size):
    a = VIEWS.scaled(size)
    factor = size / 224
    assert (a.size, a.crop_scale, a.flip_p, a.jitter, a.jitter_p, a.grayscale_p, a.blur_p) == (
        size, VIEWS.crop_scale, VIEWS.flip_p, VIEWS.jitter, VIEWS.jitter_p, VIEWS.grayscale_p, VIEWS.blur_p)
    if size < MIN_BLUR_EDGE:
        assert a.blur_kernel == 0
        assert v2.GaussianBlur not in steps_of(view_transform(pre(size), VIEWS))
    else:
        # the published kernel scaled, nearest odd number, never below 3
        nearest_odd = min(range(1, 99, 2), key=lambda k: (abs(k - 3 * factor), -k))
        assert a.blur_kernel == max(3, nearest_odd)
        assert a.blur_sigma == pytest.approx((0.1 * factor, 2.0 * factor))
    assert steps_of(view_transform(pre(size), VIEWS))[v2.RandomResizedCrop].size == (size, size)


def test_at_32_px_the_scaled_blur_would_leave_the_image_as_it_is():
    # why there is no blur below 64 px: the largest scaled sigma puts < 0.5% on each neighbour
    sigma = 2.0 * 32 / 224
    side = np.exp(-1 / (2 * sigma ** 2))
    assert side / (1 + 2 * side) < 0.005


def test_digits_are_never_flipped():
    assert view_augmentation(pre(32, "digits"), VIEWS).flip_p == 0.0
    assert v2.RandomHorizontalFlip not in steps_of(view_transform(pre(32, "digits"), VIEWS))
    assert view_augmentation(pre(32, None), VIEWS, dataset="digits").flip_p == 0.0
    assert view_augmentation(pre(32, None), VIEWS, dataset="cifar10").flip_p == 0.5


def test_two_views_are_independent_draws_normalised_like_the_model():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    views = two_view_transform(pre(32), VIEWS)
    assert isinstance(views, TwoViews)
    torch.manual_seed(0)
    a, b = views(image)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32 and not torch.equal(a, b)
    torch.manual_seed(0)
    a2, b2 = views(image)
    assert torch.equal(a, a2) and torch.equal(b, b2)  # torch's seed decides the views
    # a flat image stays flat through crop, flip and blur: its value is the normalised colour
    plain = dataclasses.replace(VIEWS, jitter_p=0.0, grayscale_p=0.0)
    flat = Image.new("RGB", (40, 40), (200, 100, 50))
    out = view_transform(pre(32), plain)(flat)
    want = [(c / 255 - m) / s for c, m, s in zip((200, 100, 50), MEAN, STD)]
    for ch in range(3):
        torch.testing.assert_close(out[ch], torch.full((32, 32), want[ch]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,message", [
    ({"crop_scale": (0.0, 1.0)}, "crop_scale must be 0 < low <= high <= 1"),
    ({"crop_scale": (0.8, 0.5)}, "crop_scale"),
    ({"flip_p": 1.5}, "flip_p must be a probability"),
    ({"blur_kernel": 4}, "blur_kernel must be 0 or odd"),
    ({"blur_sigma": (0.0, 1.0)}, "blur_sigma must be 0 < low <= high"),
    ({"jitter": (0.4, 0.4, 0.4, 0.6)}, "jitter must be 4 values"),
    ({"size": 0}, "size must be a positive integer"),
])
def test_a_bad_augmentation_is_refused_in_one_line(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(VIEWS, **change)


# ------------------------------------------------------------------------------------------------
# pixel targets


def test_pixel_targets_are_the_images_minus_the_mean_image_flattened():
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(3, 2, 3, 4, generator=g), torch.rand(2, 2, 3, 4, generator=g)]
    mean = mean_image(batches)
    images = [img for batch in batches for img in batch]
    for c in range(2):
        for i in range(3):
            for j in range(4):
                want = sum(float(img[c, i, j]) for img in images) / len(images)
                assert float(mean[c, i, j]) == pytest.approx(want, rel=1e-12)
    x = pixel_targets(batches[1], mean)
    assert x.shape == (2, 24) and x.dtype == torch.float32
    for n in range(2):
        flat = [float(batches[1][n, c, i, j]) - float(mean[c, i, j])
                for c in range(2) for i in range(3) for j in range(4)]
        assert x[n].tolist() == pytest.approx(flat, abs=1e-6)


def test_pixel_targets_refuse_what_does_not_fit():
    with pytest.raises(DataError, match="no images"):
        mean_image([])
    with pytest.raises(DataError, match="every image must have the model's input size"):
        mean_image([torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 5, 5)])
    with pytest.raises(DataError, match=r"the mean image is \(3, 4, 4\), the images \(3, 5, 5\)"):
        pixel_targets(torch.zeros(2, 3, 5, 5), torch.zeros(3, 4, 4))
    with pytest.raises(DataError, match=r"images must be \(B, C, H, W\)"):
        pixel_targets(torch.zeros(3, 5, 5), torch.zeros(3, 5, 5))
