"""``Retriever``: a model, a code collection and its index; images in, nearest items out.

Query images go through exactly the evaluation pipeline the collection was encoded with (the
model's preprocessing, :func:`hybridhash.app.encode.eval_transform`), decoded by
:func:`~hybridhash.data.images.open_image` under a pixel limit. One Retriever may serve
concurrent searches (a web server's threads): the model forward and the index search each hold a lock.

A Retriever answers from the generation of the collection it opened, whatever an update does
meanwhile (its files stay mapped). :meth:`Retriever.refresh` opens the current generation when
there is a new one (one ``stat`` when there is not) and swaps it in between searches: a search
takes the (collection, index) pair once, so one in flight finishes on the old pair.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .collection import INDEX_FILE, Collection, index_path, open_collection  # noqa: F401  (re-exported)
from .data.images import DEFAULT_MAX_PIXELS, open_image
from .data.transforms import eval_transform, model_preprocess
from .engines.encoding import encode_batch
from .errors import CheckpointError, DataError, IndexMismatchError
from .models.weights import model_fingerprint
from .precision import recorded_choice

if TYPE_CHECKING:
    from .index import HashIndex

_log = logging.getLogger(__name__)


ImageInput = Union[str, os.PathLike, bytes, Image.Image]


@dataclass
class Hit:
    """One search result: ``rank`` is 1-based, ``distance`` the Hamming distance in bits."""

    rank: int
    id: int
    distance: int
    path: str
    label: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Retriever:
    """Search a code collection with images.

    Attributes:
        bits: code length.
        count: items in the collection.
        collection: the :class:`~hybridhash.collection.Collection`.
        model: the hashing model (eval mode, on ``device``).
        preprocess: the preprocessing dict the queries go through.
        index: the :class:`~hybridhash.index.HashIndex` over the collection's codes.
    """

    def __init__(self, model: torch.nn.Module, collection: Collection, index: "HashIndex", *,
                 device: Union[str, torch.device] = "cpu", max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 checkpoint: Optional[str] = None):
        self._source = checkpoint or "the model"
        pre = self._check(model, collection, index)
        self._state = (collection, index)  # replaced whole by refresh(): readers take both at once
        self._kind: Optional[str] = None  # the index kind asked for when opened (None: the saved one)
        self._root: Optional[Union[str, os.PathLike]] = None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = pre
        self.max_pixels = max_pixels
        self.transform = eval_transform(model)
        self._model_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._refresh_lock = threading.Lock()

    def _check(self, model: torch.nn.Module, collection: Collection, index: "HashIndex") -> Dict[str, Any]:
        """IndexMismatchError unless ``model``, ``collection`` and ``index`` belong together; the preprocessing."""
        source = self._source
        if int(model.bits) != collection.bits:
            raise IndexMismatchError(f"{collection.directory} holds {collection.bits}-bit codes, {source} makes "
                                     f"{model.bits}-bit codes")
        fp = model_fingerprint(model)
        if collection.fingerprint != fp:
            raise IndexMismatchError(f"{collection.directory} was encoded by model {collection.fingerprint}, "
                                     f"{source} is model {fp}; encode the images again with it")
        pre = model_preprocess(model)
        if collection.preprocess is not None and collection.preprocess != pre:
            raise IndexMismatchError(f"{collection.directory} was encoded with preprocessing {collection.preprocess}, "
                                     f"{source} now uses {pre}")
        ntotal = int(index.ntotal)
        if ntotal != collection.count:
            raise IndexMismatchError(f"the index holds {ntotal} codes, the collection {collection.directory} "
                                     f"{collection.count}; rebuild it with `hybridhash index`")
        built_from = getattr(index, "codes_sha256", None)
        if built_from is not None and built_from != collection.codes_sha256:
            raise IndexMismatchError(f"the index was built from other codes than those of {collection.directory} "
                                     f"(sha256 {str(built_from)[:12]}, the collection's "
                                     f"{collection.codes_sha256[:12]}); "
                                     f"rebuild it with `hybridhash index`")
        return pre

    @property
    def collection(self) -> Collection:
        return self._state[0]

    @property
    def index(self) -> "HashIndex":
        return self._state[1]

    @property
    def generation(self) -> int:
        """The generation of the collection answered from."""
        return self.collection.generation

    def refresh(self) -> bool:
        """Switch to the collection's current generation if an update made a new one; whether it switched.

        Cheap when nothing changed (one ``stat`` of the manifest). The new generation and its index
        are opened and checked before the swap, so searches never see a half-opened one; a search
        running meanwhile finishes on the old generation. Errors (a new generation of another model)
        leave the old one in use and are raised; a collection being encoded again from scratch
        (no manifest for now) is not switched to yet.
        """
        with self._refresh_lock:
            old = self.collection
            if old.is_current() or not (old.directory / "manifest.json").is_file():
                return False
            collection = open_collection(old.directory, root=self._root)
            index = load_or_build_index(collection, self._kind)
            self._check(self.model, collection, index)
            self._state = (collection, index)
            return True

    @property
    def bits(self) -> int:
        return self.collection.bits

    @property
    def count(self) -> int:
        return self.collection.count

    @classmethod
    def open(cls, index_dir: Union[str, os.PathLike], checkpoint: Optional[Union[str, os.PathLike]] = None,
             device: Union[str, torch.device] = "cpu", kind: Optional[str] = None, *,
             max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, root: Optional[Union[str, os.PathLike]] = None,
             runtime: str = "auto", threads: Optional[int] = None, precision: str = "auto") -> "Retriever":
        """Open the collection in ``index_dir`` with its saved index and a model.

        Args:
            checkpoint: a project checkpoint directory; default the one named in the manifest.
            kind: an index kind; None loads the saved index (or builds a flat one in memory when
                none was saved); a kind other than the saved one is built in memory.
            root: the image root, when the images moved since encoding.
            runtime: ``torch``, ``onnx``, ``openvino`` or ``auto`` (:func:`hybridhash.engines.open_encoder`);
                ``threads``: the export runtime's threads.
            precision: ``fp32``, ``bf16``, ``int8`` or ``auto``: the collection's recorded runtime and
                precision (:func:`hybridhash.precision.recorded_choice`); another one asked for runs,
                after a warning that the codes may differ from the collection's.

        Raises:
            IndexMismatchError: the collection or index has another bit length or model than the checkpoint.
        """
        from .engines import open_encoder

        collection = open_collection(index_dir, root=root)
        ckpt = checkpoint if checkpoint is not None else collection.checkpoint
        if ckpt is None:
            raise CheckpointError(f"{index_dir}: the manifest names no checkpoint; pass one")
        if checkpoint is None and not Path(ckpt).exists():
            raise CheckpointError(f"{ckpt}: the checkpoint named in {collection.directory}/manifest.json is gone; "
                                  f"pass the checkpoint explicitly")
        runtime, precision, mismatch = recorded_choice(collection.manifest.get("runtime"),
                                                       collection.manifest.get("precision"), runtime, precision)
        if mismatch:
            _log.warning("%s: %s", collection.directory, mismatch)
        model = open_encoder(ckpt, runtime, str(device), threads=threads, precision=precision)
        # refuse a wrong model before loading (and possibly building) the index
        if int(model.bits) != collection.bits:
            raise IndexMismatchError(f"{collection.directory} holds {collection.bits}-bit codes, checkpoint {ckpt} "
                                     f"makes {model.bits}-bit codes")
        index = load_or_build_index(collection, kind)
        retriever = cls(model, collection, index, device=device, max_pixels=max_pixels, checkpoint=str(ckpt))
        retriever._kind, retriever._root = kind, root
        return retriever

    # ------------------------------------------------------------------------------------------
    def _to_tensor(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            x = images[None] if images.dim() == 3 else images
            size = self.preprocess["img_size"]
            if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
                raise DataError(f"a preprocessed batch must be (B, 3, {size}, {size}), got {tuple(images.shape)}")
            return x.float()
        if isinstance(images, (str, os.PathLike, bytes, bytearray, Image.Image)):
            images = [images]
        tensors = [self._one(img) for img in images]  # each (3, H, W)
        if not tensors:
            raise DataError("no query images")
        return torch.stack(tensors)  # (B, 3, H, W)

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """One query image -> its preprocessed float32 (3, H, W) tensor, which :meth:`search` also
        takes in a list. The service prepares each upload as soon as it is decoded, so the
        full-size image is released before the query waits for a model forward."""
        return self.transform(self._open(image))

    def _one(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):  # already prepared
            size = self.preprocess["img_size"]
            if tuple(img.shape) != (3, size, size):
                raise DataError(f"a prepared query must be (3, {size}, {size}), got {tuple(img.shape)}")
            return img.float()
        return self.prepare(img)

    def _open(self, img: ImageInput) -> Image.Image:
        if isinstance(img, Image.Image):
            w, h = img.size
            if self.max_pixels is not None and w * h > self.max_pixels:
                raise DataError(f"<image>: {w}x{h} = {w * h} pixels is over the limit of {self.max_pixels}")
            return img if img.mode == "RGB" else img.convert("RGB")
        if isinstance(img, (bytes, bytearray)):
            return open_image(bytes(img), self.max_pixels, name="<upload>")
        if isinstance(img, (str, os.PathLike)):
            return open_image(img, self.max_pixels)
        raise DataError(f"a query image must be a path, bytes or a PIL image, got {type(img).__name__}")

    def encode_images(self, images: Union[Sequence[ImageInput], ImageInput, torch.Tensor]) -> np.ndarray:
        """Paths, bytes, PIL images or prepared (3, H, W) tensors (or a preprocessed batch (B, 3, H, W))
        -> int8 +-1 codes (B, bits)."""
        x = self._to_tensor(images)  # (B, 3, H, W)
        with self._model_lock:
            return encode_batch(self.model, x, device=self.device)  # (B, bits) int8

    def search_codes(self, codes: np.ndarray, k: int = 10) -> List[List[Hit]]:
        """Codes (+-1 (B, bits) or packed uint8 (B, bits/8)) -> B lists of at most ``k`` hits, nearest first
        (ties by id); fewer than ``k`` when the collection is smaller. ``k`` is at most
        :data:`hybridhash.limits.K_CAP`."""
        from .index import check_k

        k = check_k(k)
        if isinstance(codes, torch.Tensor):
            codes = codes.cpu().numpy()
        collection, index = self._state  # one generation for the whole search
        with self._index_lock:
            # no empty slots asked for: a k far beyond the collection allocates nothing extra
            dist, ids = index.search(codes, min(k, int(index.ntotal)))  # (B, k') int32, int64
        out = []
        for drow, irow in zip(dist, ids):
            hits = []
            for d, i in zip(drow, irow):
                if i < 0:  # empty slot: k exceeds the collection
                    break
                hits.append(Hit(rank=len(hits) + 1, id=int(i), distance=int(d), path=collection.path(i),
                                label=collection.label(i)))
            out.append(hits)
        return out

    def search(self, images: Union[Sequence[ImageInput], ImageInput, torch.Tensor], k: int = 10) -> List[List[Hit]]:
        """Images (see :meth:`encode_images`) -> one list of hits per image, nearest first."""
        from .index import check_k

        check_k(k)  # before any image is decoded
        return self.search_codes(self.encode_images(images), k)

    def __repr__(self) -> str:
        return (f"Retriever({str(self.collection.directory)!r}, count={self.count}, bits={self.bits}, "
                f"index={self.index.kind})")


def build_index(collection: Collection, kind: str = "flat", **params: Any) -> "HashIndex":
    """A :class:`~hybridhash.index.HashIndex` of ``kind`` over the collection's codes, in memory.

    ``params`` are the kind's parameters (e.g. ``nlist``, ``nprobe`` for ``ivf``).
    """
    from .index import HashIndex

    from .index_ids import add_with_ids

    index = HashIndex(collection.bits, kind=kind, fingerprint=collection.fingerprint, **params)
    if collection.count and collection.ids is not None:  # an updated collection: its rows carry their ids
        add_with_ids(index, np.ascontiguousarray(collection.codes), np.asarray(collection.ids))
    elif collection.count:
        index.add(np.ascontiguousarray(collection.codes))  # (n, bits/8) uint8
    index.codes_sha256 = collection.codes_sha256  # saved in the sidecar: the index answers for these codes only
    return index


def load_or_build_index(collection: Collection, kind: Optional[str] = None) -> "HashIndex":
    """The saved index of ``collection`` when there is one of ``kind`` (any kind if None), else a new one.

    A saved index of another bit length or model than the collection raises IndexMismatchError.
    A saved index built from other codes than the collection's (its sidecar's ``codes_sha256``
    differs, or is missing in an index saved before it was recorded) is stale: the project wrote it
    beside the collection, so it is left unused and a fresh index is built in memory, with a warning
    to run ``hybridhash index`` again. (``HashIndex.load`` with ``expect_codes_sha256`` refuses such an
    index instead, for an index a caller names explicitly.)
    """
    from .index import HashIndex, StaleIndexError

    path = collection.index_path
    if path.is_file():
        try:
            index = HashIndex.load(path, expect_bits=collection.bits, expect_fingerprint=collection.fingerprint,
                                   expect_codes_sha256=collection.codes_sha256)
        except StaleIndexError as err:
            _log.warning("%s: not used, building a %s index in memory", err, kind or "flat")
            return build_index(collection, kind or "flat")
        if kind is None or index.kind == kind:
            return index
        _log.info("the saved index is %s; building a %s index in memory", index.kind, kind)
    return build_index(collection, kind or "flat")
