"""What the training loop gives a method's loss besides the outputs h, by what the method declares it
trains on (``trains_on``, never its name), and the label-free validation score.

- ``labels``: ``loss(h, y, index)``; with ``features=`` (B, F), the penultimate features, for a method that
  ``takes_features`` (:class:`FeatureTap`).
- ``targets``: ``loss(h, x)``, x (B, d): pixel targets (the input images minus the training set's mean
  image, flattened; ``--targets pixels``, for a model trained from scratch) or the pooled features of
  the pretrained backbone, frozen (``--targets features``, the published form: only the hash head trains).
- ``views``: ``loss(h1, h2)``: two views of each training image by the method's ``views`` augmentation.

Methods that declare ``even_batch`` get even batches only (the last batch loses its odd row). The
label-free validation score itself is :mod:`.selection`'s; its Spearman correlation with the true
one over a run's epochs is :func:`copy_spearman`.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from torch import nn

from ...errors import ConfigError


def methods_training_on(*kinds: str) -> List[str]:
    """The registered methods whose ``trains_on`` is one of ``kinds``, sorted."""
    from ...methods import list_methods, method_class

    return [m for m in list_methods() if method_class(m).trains_on in kinds]


def check_method_data(method: str, protocol, option: str = "--method") -> None:
    """Refuse a method that trains on labels on data without any (one line naming those that work)."""
    from ...methods import method_class

    if method_class(method).trains_on == "labels" and not getattr(protocol, "labelled", True):
        raise ConfigError(f"{option} {method} trains on labels, and {protocol.name} has none (images without class "
                          f"folders or label columns); choose a method that trains without labels: "
                          f"{', '.join(methods_training_on('targets', 'views'))}")


def fed_defaults(config):
    """``config`` (before the recipe fills it) with what its method's feeding needs: two-view methods
    stream their images (each view is made from the decoded image), unless an option says otherwise."""
    import dataclasses

    from ...methods import method_class

    if method_class(config.method).trains_on == "views" and config.data_mode is None:
        return dataclasses.replace(config, data_mode="stream")
    return config


def check_method_options(config, img_size: int, preprocess: Optional[dict] = None) -> None:
    """Refuse options the method cannot be fed with (``config`` resolved): an odd batch for a method that
    pairs halves, features without a pretrained network, views at an image size whose crops cannot differ."""
    from ...methods import method_class

    cls = method_class(config.method)
    if cls.even_batch and config.batch_size % 2:
        raise ConfigError(f"--batch-size {config.batch_size}: {config.method} pairs the first half of each batch with "
                          f"the second, so batches must be even; use --batch-size {config.batch_size + 1}")
    if cls.trains_on == "targets" and config.targets == "features" and not config.pretrained:
        raise ConfigError(f"--targets features: {config.method} would copy the feature space of a pretrained network, "
                          f"and none is given; add --pretrained imagenet (or a weights file), or use --targets pixels")
    if cls.trains_on == "views":
        from ...data.views import min_view_edge, narrowest_crop, view_augmentation

        aug = view_augmentation(preprocess or {"img_size": img_size}, cls.views, config.dataset)
        need = min_view_edge(aug)
        if need is None or img_size < need:
            least = "no image size" if need is None else f"images of at least {need} px"
            raise ConfigError(f"{config.method}: its two views differ by a random crop of {aug.crop_scale[0]:g} to "
                              f"{aug.crop_scale[1]:g} of the image, narrowest {narrowest_crop(aug):.3g} of its edge, "
                              f"which needs {least}; the model takes {img_size} px: use a larger --model-overrides "
                              f"img_size (or another --model)")
        if config.data_mode == "cache":
            raise ConfigError(f"--data-mode cache: {config.method} trains on two augmented views made per image from "
                              f"the decoded image; use --data-mode stream (or leave it unset)")


def attach_head(model: nn.Module, method: nn.Module) -> None:
    """A method's own head (``make_head``, cibhash's encoder) in place of the model's bits layer."""
    from ...methods.base import Method
    from ...models.heads import attach_method_head

    if isinstance(method, Method) and type(method).make_head is not Method.make_head:
        attach_method_head(model, method.name, method.config.to_dict())


class FeatureTap:
    """Keeps the input of ``model.hash_head.to_bits`` at each forward: the penultimate features that a
    method which ``takes_features`` is given beside h (through DDP's forward too, with their gradient)."""

    def __init__(self, model: nn.Module) -> None:
        layer = getattr(getattr(model, "hash_head", None), "to_bits", None)
        if layer is None:
            raise ConfigError(f"{type(model).__name__} has no hash_head.to_bits layer whose input a method's loss "
                              "could take as the penultimate features; choose another --model")
        self.value: Optional[torch.Tensor] = None
        layer.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args) -> None:
        self.value = args[0]

    def take(self) -> dict:
        """``{"features": f}``, f (B, F) float32 of the last forward (a map (B, F, h, w) averaged over its
        positions, as the hash layer's outputs are); the tap lets go of it."""
        f, self.value = self.value, None
        if f is None:
            raise ConfigError("no forward pass filled the feature tap before the loss")
        return {"features": (f.mean((2, 3)) if f.dim() == 4 else f).float()}


def feature_tap(model: nn.Module, method: nn.Module) -> Optional[FeatureTap]:
    """A :class:`FeatureTap` on ``model`` when ``method`` takes features, else None."""
    return FeatureTap(model) if getattr(method, "takes_features", False) else None


def tapped(tap: Optional[FeatureTap]) -> dict:
    """The keyword arguments a tap adds to the loss: ``features=`` (B, F), or none without a tap."""
    return {} if tap is None else tap.take()


def freeze_backbone(model: nn.Module) -> None:
    """Stop the gradient of every parameter outside ``model.hash_head`` (``--targets features``)."""
    for name, p in model.named_parameters():
        if not name.startswith("hash_head."):
            p.requires_grad_(False)


def hold_backbone_norms(model: nn.Module) -> None:
    """Batch norms outside ``model.hash_head`` in eval mode (after ``model.train()``): a frozen backbone
    keeps its running statistics, so its feature space stays the one the targets come from; dropout
    still acts, as in the published form."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not name.startswith("hash_head"):
            m.eval()


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's features of images x (B, 3, H, W), pooled: (B, F) float32, no gradient (a
    feature map (B, F, h, w) is averaged over its positions)."""
    with torch.no_grad():
        f = model.forward_features(x)
        if f.dim() == 4:
            f = f.mean((2, 3))
    return f.float()


def target_maker(config, model: nn.Module, mean_images: Callable[[], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (B, 3, H, W) model inputs -> the targets (B, d) of ``config.targets``; ``mean_images``: the
    training images through the evaluation pipeline as (B, 3, H, W) batches (pixel targets' mean)."""
    from ...data.targets import mean_image, pixel_targets

    if config.targets == "features":
        return lambda x: pooled_features(model, x)
    mean = mean_image(mean_images()).float()
    return lambda x: pixel_targets(x, mean.to(x.device))


def even_rows(n: int) -> int:
    """The rows of a batch of ``n`` that an even-batch method keeps: n rounded down to even."""
    return n - n % 2


def copy_spearman(history: List[dict]) -> Optional[float]:
    """Spearman's rank correlation over the epochs of ``history`` (per-epoch records) that logged both
    the true ``val_map`` and the label-free ``val_copy_map``; None when fewer than two did."""
    from ...metrics import spearman

    pairs = [(r["val_map"], r["val_copy_map"]) for r in history if "val_map" in r and "val_copy_map" in r]
    if len(pairs) < 2:
        return None
    value = spearman([a for a, _ in pairs], [b for _, b in pairs])
    return None if value is None else round(value, 6)
