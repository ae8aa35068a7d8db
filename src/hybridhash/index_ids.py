"""Ids the caller chooses on a :class:`~hybridhash.index.HashIndex`: adding codes under given ids,
removing ids, and how far an ivf index's cells have drifted from the codes it holds.

A collection's update (:mod:`hybridhash.generations`) keeps the ids of unchanged images, so the
index of the new generation is the old one with the gone ids removed and the new ones added; it
is never rebuilt. A flat index becomes a ``faiss.IndexBinaryIDMap`` over an ``IndexBinaryFlat``
the first time: faiss scans its rows in order and keeps equal distances in row order, so ids are
added in increasing order (above every id held) and ties stay ties by id, exactly as before. An
ivf index keeps its trained cells and stores the ids in its lists.

**Drift.** Cells are trained once, on the codes of the first ``add``. :func:`ivf_drift` is the share
of the rows held now that were added after that (ids at or above ``trained_next_id``); past
:data:`hybridhash.limits.IVF_RETRAIN_SHARE` the cells were learnt from too small a part of what they
now sort, and ``hybridhash index --kind ivf`` should train them again.
"""
from __future__ import annotations

from typing import Any, Optional

import faiss
import numpy as np

from .codes import as_packed
from .errors import ConfigError
from .index import HashIndex


def _ids(ids: Any, n: int) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(ids), dtype=np.int64)
    if out.shape != (n,):
        raise ConfigError(f"{n} codes need {n} ids, got shape {tuple(np.shape(ids))}")
    if n and (int(out.min()) < 0 or bool((np.diff(out) < 1).any())):
        raise ConfigError("ids must be non-negative and strictly increasing")
    return out


def _map_flat(index: HashIndex) -> None:
    """A flat index holding ids 0..n-1 -> the same rows in an IndexBinaryIDMap under those ids."""
    inner = index._index
    if isinstance(inner, faiss.IndexBinaryIDMap):
        return
    n = int(inner.ntotal)
    xb = faiss.vector_to_array(inner.xb).reshape(n, index.code_size) if n else np.zeros((0, index.code_size), np.uint8)
    mapped = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(index.bits))
    if n:
        mapped.add_with_ids(xb, np.arange(n, dtype=np.int64))
    index._index = mapped


def _largest_id(index: HashIndex) -> int:
    """The largest id a mapped flat index holds (-1 when empty); its ids increase with the rows."""
    n = index.ntotal
    return int(index._index.id_map.at(n - 1)) if n else -1


def add_with_ids(index: HashIndex, codes: Any, ids: Any) -> None:
    """Add codes ``(n, bits/8)`` packed or ``(n, bits)`` +-1 under ``ids`` int64 (n,), strictly increasing.

    For a flat index every new id must be above every id it holds (so ties stay by id); an
    untrained ivf index is first trained on these codes.
    """
    x = as_packed(codes, index.bits)
    ids = _ids(ids, x.shape[0])
    if x.shape[0] == 0:
        return
    if index.kind == "flat":
        _map_flat(index)
        if int(ids[0]) <= _largest_id(index):
            raise ConfigError(f"a flat index takes new ids above the largest it holds ({_largest_id(index)}), "
                              f"got {int(ids[0])}")
        index._index.add_with_ids(x, ids)
    else:
        if not index.is_trained:
            index.train(x)
        index._add_ivf(x, ids)
    index.mapped = True


def remove_ids(index: HashIndex, ids: Any) -> int:
    """Remove the codes held under ``ids`` (int64, any order; ids not held are ignored); returns how many went."""
    ids = np.unique(np.ascontiguousarray(np.asarray(ids), dtype=np.int64))
    if ids.size == 0 or not index.is_trained:
        return 0
    if index.kind == "flat":
        _map_flat(index)
    index.mapped = True
    return int(index._index.remove_ids(faiss.IDSelectorBatch(ids)))


def ivf_drift(index: HashIndex, ids: np.ndarray) -> Optional[float]:
    """The share of the rows held (their ids int64 (ntotal,)) added after an ivf index's cells were
    trained; None for a flat index or an empty one."""
    if index.kind != "ivf" or len(ids) == 0 or index.trained_next_id is None:
        return None
    return float((np.asarray(ids) >= index.trained_next_id).mean())
