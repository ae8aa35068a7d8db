"""Datasets by name, split by their retrieval protocols.

>>> proto = load_protocol("digits", seed=0)
>>> len(proto.query), len(proto.train), len(proto.val), len(proto.database)
(200, 450, 50, 1597)
>>> image, target, i = proto.train[0]          # PIL RGB image, float32 (10,) multi-hot, row 0

Modules: :mod:`.protocols` (the table), :mod:`.load` (``load_protocol``, ``Protocol``, split
records), :mod:`.sets` (pools, ``RetrievalSet``), :mod:`.splits` (seeded draws), one reader per
source (:mod:`.digits`, :mod:`.cifar`, :mod:`.listfile`, :mod:`.folder`), :mod:`.distort` (seeded
distortions of the derived ``digits_hard``), :mod:`.images` (safe
loading), :mod:`.transforms` (pipelines from a model's preprocess dict), :mod:`.check`.
"""
import importlib
from typing import Any

# name -> submodule; imported on first use, so that reading a constant or a protocol name does
# not load torch (``hybridhash --help`` builds its parsers from them)
_LAZY = {
    "DEFAULT_MAX_PIXELS": "images", "open_image": "images",
    "SPLIT_FORMAT": "load", "Protocol": "load", "load_protocol": "load",
    "PROTOCOLS": "protocols", "ProtocolSpec": "protocols", "get_spec": "protocols", "list_protocols": "protocols",
    "RetrievalSet": "sets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_PIXELS", "PROTOCOLS", "Protocol", "ProtocolSpec", "RetrievalSet", "SPLIT_FORMAT",
    "build_transform", "check_protocol", "get_spec", "list_protocols", "load_protocol", "open_image",
    "pipeline_for",
]


def build_transform(preprocess, train, dataset=None):
    """See :func:`hybridhash.data.transforms.build_transform` (imported lazily: it loads torchvision)."""
    from .transforms import build_transform as _build
    return _build(preprocess, train, dataset)


def pipeline_for(dataset=None):
    """See :func:`hybridhash.data.transforms.pipeline_for`."""
    from .transforms import pipeline_for as _pipeline_for
    return _pipeline_for(dataset)


def check_protocol(name, root=None, **kwargs):
    """See :func:`hybridhash.data.check.check_protocol`."""
    from .check import check_protocol as _check
    return _check(name, root, **kwargs)
