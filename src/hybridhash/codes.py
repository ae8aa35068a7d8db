"""The binary code format, for the whole project: code lengths, the sign rule, packing, popcount,
Hamming distances and the exact top k (ties by database index). Every other module (metrics, index,
encoder, evaluation) uses these.

A code of ``bits`` bits is held in one of two forms:

- +-1 values ``(n, bits)`` of a numeric dtype (or bool, True for +1);
- packed ``uint8 (n, ceil(bits / 8))`` in ``np.packbits`` order: a +1 is a set bit, the first code
  bit is the most significant bit of the first byte, the last byte is padded with zero bits (which
  leaves Hamming distances between equally long codes unchanged). faiss's binary indexes take
  exactly this layout.

Rules:

- the sign rule: a real value ``>= 0`` is bit 1 (+1), anything else bit 0 (-1); an output of
  exactly 0 is +1, because ``sign(0) = 0`` is no binary code (:func:`binarize`);
- the code-length rule: models, training runs and indexes use a multiple of 8 from 8 to 256 bits
  (:func:`check_bits`), because faiss's binary indexes need whole bytes. The metrics themselves
  accept any length.

Two readers of +-1 input: :func:`pack_pm1` is strict (exactly -1 or +1, so 0/1 bits or raw
outputs passed by mistake are caught; the metrics use it); :func:`as_packed` takes packed codes
or real values of any sign, binarised with the sign rule (the index uses it).

Popcount uses ``np.bitwise_count`` on numpy >= 2 and a SWAR bit count otherwise; the module
switch :data:`USE_BITWISE_COUNT` lets tests force the fallback.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .errors import ConfigError, DataError, IndexMismatchError

__all__ = [
    "MIN_BITS", "MAX_BITS", "USE_BITWISE_COUNT", "check_bits", "binarize", "to_numpy", "bits_from_pm1", "pack_bits",
    "pack_pm1", "as_packed", "unpack_codes", "words", "popcount", "popcount_swar", "distance_dtype",
    "xor_popcount", "read_codes", "read_pair", "PackedDatabase", "hamming_distances", "rank_rows",
    "hamming_topk",
]

MIN_BITS, MAX_BITS = 8, 256

# numpy >= 2 has a native popcount; set to False to run the SWAR fallback (what numpy 1.x gets)
USE_BITWISE_COUNT: bool = hasattr(np, "bitwise_count")

# uint64 cells per xor tile: 1 MiB, so the xor buffer stays in cache between xor and popcount
_TILE_CELLS = 1 << 17
# query-by-database cells per chunk of a search: ~4 M keeps a chunk's buffers in tens of MB
_CHUNK_CELLS = 1 << 22
# database columns sampled to guess a top-k distance threshold
_SAMPLE_COLS = 8192


# ----------------------------------------------------------------------------------------------
# rules


def check_bits(bits: Any, name: str = "bits") -> int:
    """The code length as an int, or ConfigError: a multiple of 8 from 8 to 256 inclusive.

    ``name`` is how the message calls the value (e.g. ``--bits``).
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ConfigError(f"{name} must be a multiple of 8 between {MIN_BITS} and {MAX_BITS}, got {bits!r}")
    bits = int(bits)
    if bits % 8 or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{name} must be a multiple of 8 between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


def binarize(values):
    """Real values -> int8 +-1 codes of the same shape by the sign rule (``>= 0`` -> +1).

    A torch tensor gives a torch tensor on the same device, anything else a numpy array.
    """
    if hasattr(values, "detach"):  # torch, imported only by callers that have it
        import torch

        return torch.where(values >= 0, 1, -1).to(torch.int8)
    return np.where(np.asarray(values) >= 0, 1, -1).astype(np.int8)


def to_numpy(name: str, x) -> np.ndarray:
    """numpy arrays, torch tensors (read on the CPU) and nested lists as a numpy array; DataError otherwise."""
    if hasattr(x, "detach"):  # a torch tensor: read on the CPU, half types widened for numpy
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise DataError(f"{name} is not an array: {err}") from None


def bits_from_pm1(name: str, codes: np.ndarray) -> np.ndarray:
    """Strict +-1 reader: (n, bits) exactly +-1 (or bool) -> (n, bits) bool, True for +1."""
    if codes.dtype == np.bool_:
        return codes
    if not (np.issubdtype(codes.dtype, np.integer) or np.issubdtype(codes.dtype, np.floating)):
        raise DataError(f"{name} must be numeric +-1 codes or packed uint8, got dtype {codes.dtype}")
    positive = codes == 1
    valid = positive | (codes == -1)
    if not np.all(valid):
        bad = codes[~valid].ravel()[0].item()
        raise DataError(
            f"{name} holds {bad!r}: +-1 codes must be exactly -1 or +1 "
            "(binarise with `where(u >= 0, 1, -1)`; pack 0/1 bits with hybridhash.codes.pack_bits)"
        )
    return positive


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Bool (n, m) -> packed uint8 (n, ceil(m / 8)) in ``np.packbits`` order (rows zero padded)."""
    return np.packbits(np.asarray(bits, dtype=np.bool_), axis=1)


# ----------------------------------------------------------------------------------------------
# packing


def pack_pm1(codes, name: str = "codes") -> np.ndarray:
    """Strict: +-1 codes (n, bits) (or bool, True for +1) -> packed uint8 (n, ceil(bits / 8)).

    numpy arrays, torch tensors and nested lists are read. A uint8 array is refused: it reads as
    already packed.

    Raises:
        DataError: not 2-D, uint8, a non-numeric dtype, or a value other than -1 and +1.
    """
    arr = to_numpy(name, codes)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (n, bits), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        raise DataError(f"{name} is uint8, which reads as already packed; pass +-1 codes (int8 or float)")
    return pack_bits(bits_from_pm1(name, arr))


def as_packed(codes, bits: int) -> np.ndarray:
    """Lenient: codes of length ``bits`` as a C-contiguous packed ``uint8 (n, bits/8)`` array.

    Args:
        codes: packed ``uint8 (n, bits/8)``, or real values ``(n, bits)`` of a signed integer or
            float dtype binarised by the sign rule (value >= 0 -> bit 1). numpy arrays, torch
            tensors and nested lists are accepted.
        bits: the code length the caller expects (see :func:`check_bits`).

    Raises:
        IndexMismatchError: codes of another bit length.
        DataError: not a 2-D array, an unsupported dtype, or NaN values.
    """
    bits = check_bits(bits)
    arr = to_numpy("codes", codes)
    if arr.ndim != 2:
        raise DataError(f"codes must be a 2-D array (n, {bits // 8}) packed uint8 or (n, {bits}) +-1, "
                        f"got shape {arr.shape}")
    width = arr.shape[1]
    if arr.dtype == np.uint8:
        if width != bits // 8:
            raise IndexMismatchError(f"packed codes have {width * 8} bits (width {width} bytes), "
                                     f"expected {bits} bits (width {bits // 8})")
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "if":
        raise DataError(f"codes of dtype {arr.dtype} are not accepted: pass packed uint8 (n, {bits // 8}) "
                        f"or +-1 values (n, {bits}) of a signed integer or float dtype")
    if width != bits:
        raise IndexMismatchError(f"+-1 codes have {width} bits, expected {bits} bits")
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise DataError("+-1 codes contain NaN or infinite values")
    return pack_bits(arr >= 0)  # the sign rule, as binarize


def unpack_codes(packed, bits: Optional[int] = None) -> np.ndarray:
    """Packed uint8 (n, nbytes) -> +-1 int8 codes (n, bits); ``bits`` defaults to 8 * nbytes."""
    arr = to_numpy("packed", packed)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise DataError(f"packed must be a 2-D uint8 array, got {arr.dtype} of shape {arr.shape}")
    width = 8 * arr.shape[1]
    if bits is None:
        bits = width
    if not 0 < bits <= width or bits <= width - 8:
        raise ConfigError(f"bits={bits} does not fit packed codes of {arr.shape[1]} bytes")
    unpacked = np.unpackbits(arr, axis=1, count=bits)  # (n, bits) 0/1
    return (unpacked.astype(np.int8) * 2 - 1).astype(np.int8)


def words(packed: np.ndarray) -> np.ndarray:
    """Packed uint8 (n, nbytes) -> uint64 (n, ceil(nbytes / 8)), zero padded."""
    n, nbytes = packed.shape
    width = -(-nbytes // 8) * 8
    padded = np.zeros((n, width), np.uint8)
    padded[:, :nbytes] = packed
    # the byte order inside a word does not matter: only popcount(xor) is taken
    return padded.view(np.uint64)


# ----------------------------------------------------------------------------------------------
# popcount and Hamming distances


def popcount_swar(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Set bits of each element of an unsigned integer array, by SWAR (no numpy 2 needed): uint8."""
    x = np.asarray(x)
    if x.dtype.kind != "u":
        raise DataError(f"popcount needs unsigned integers, got dtype {x.dtype}")
    t = x.dtype.type
    size = x.dtype.itemsize

    def rep(byte: int):  # the byte repeated over the width of the dtype
        return t(int.from_bytes(bytes([byte]) * size, "little"))

    # numpy scalars of the array's own type throughout: numpy 1.x would turn uint64 op int into float64
    x = x - ((x >> t(1)) & rep(0x55))
    x = (x & rep(0x33)) + ((x >> t(2)) & rep(0x33))
    x = (x + (x >> t(4))) & rep(0x0F)  # bit count of each byte, in that byte
    if size > 1:
        x = (x * rep(0x01)) >> t(8 * (size - 1))  # the top byte gathers the sum of all bytes
    if out is None:
        return x.astype(np.uint8)
    out[...] = x
    return out


def popcount(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Set bits of each element of an unsigned integer array: uint8 of the same shape (or ``out``)."""
    if USE_BITWISE_COUNT and hasattr(np, "bitwise_count"):
        return np.bitwise_count(x) if out is None else np.bitwise_count(x, out=out)
    return popcount_swar(x, out)


def distance_dtype(nbytes: int) -> type:
    """The smallest unsigned dtype that holds distances 0..8 * nbytes."""
    return np.uint8 if 8 * nbytes <= 255 else np.uint16


def xor_popcount(query: np.ndarray, database_t: np.ndarray, out: np.ndarray,
                 threshold: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Hamming distances of word-packed codes, tile by tile, into ``out``; returns ``out``.

    Args:
        query: uint64 (qc, W) words (see :func:`words`).
        database_t: uint64 (W, n), one row per word (the database's words transposed).
        out: (qc, n) unsigned integers that hold 64 * W (see :func:`distance_dtype`).
        threshold: optional (qc, 1) per-query distances; ``mask`` (qc, n) bool then receives
            ``out <= threshold``, built while the tile is still in cache.
    """
    qc, n = query.shape[0], database_t.shape[1]
    tile = max(64, _TILE_CELLS // max(qc, 1))
    buf = np.empty((qc, min(tile, n)), np.uint64)
    count = np.empty((qc, min(tile, n)), np.uint8)
    for b in range(0, n, tile):
        e = min(b + tile, n)
        x, o = buf[:, : e - b], out[:, b:e]
        for w in range(query.shape[1]):
            np.bitwise_xor(query[:, w, None], database_t[w, None, b:e], out=x)
            if w == 0:
                popcount(x, out=o)
            else:
                np.add(o, popcount(x, out=count[:, : e - b]), out=o)
        if mask is not None:
            np.less_equal(o, threshold, out=mask[:, b:e])
    return out


# ----------------------------------------------------------------------------------------------
# reading a query set against a database


def read_codes(codes, name: str = "codes") -> tuple[np.ndarray, Optional[int]]:
    """+-1 or packed codes -> (packed uint8 (n, nbytes), the bit length a +-1 width tells, else None);
    a uint8 array reads as packed, anything else as strict +-1 (:func:`pack_pm1`)."""
    arr = to_numpy(name, codes)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (n, bits) or packed (n, bytes), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr), None
    return pack_pm1(arr, name), arr.shape[1]


def read_pair(query, database, names: tuple[str, str] = ("query codes", "database codes")
              ) -> tuple[np.ndarray, np.ndarray, int]:
    """Query and database codes (+-1 or packed, see :func:`read_codes`) checked against each other.

    Returns (query packed uint8 (nq, B), database packed uint8 (n, B), bits); IndexMismatchError
    when their lengths differ, naming them by ``names``.
    """
    qp, qbits = read_codes(query, names[0])
    dp, dbits = read_codes(database, names[1])
    if qp.shape[1] != dp.shape[1] or (qbits and dbits and qbits != dbits):
        qdesc = f"{qbits} bits" if qbits else f"{qp.shape[1]} packed bytes"
        ddesc = f"{dbits} bits" if dbits else f"{dp.shape[1]} packed bytes"
        raise IndexMismatchError(f"{names[0]} have {qdesc} but {names[1]} have {ddesc}")
    return qp, dp, qbits or dbits or 8 * qp.shape[1]


# ----------------------------------------------------------------------------------------------
# brute-force search: every distance, and the exact top k with ties by database index


class PackedDatabase:
    """Database codes laid out for brute-force Hamming search (popcount of xor, tile by tile).

    ``packed``: uint8 (n, nbytes) codes. Attributes: ``n`` items; ``words_t`` uint64 (W, n), one
    row per word; ``dtype`` of the distances (:func:`distance_dtype`); ``levels`` = 8 * nbytes + 1.
    """

    def __init__(self, packed: np.ndarray) -> None:
        self.n, nbytes = packed.shape
        self.words_t = np.ascontiguousarray(words(packed).T)  # (W, n)
        self.dtype = distance_dtype(nbytes)
        self.levels = 8 * nbytes + 1
        self._samples: dict[int, np.ndarray] = {}

    def distances(self, query: np.ndarray, threshold: Optional[np.ndarray] = None, step: int = 1):
        """Hamming distances of query words ``(qc, W)`` (see :func:`words`) to the database.

        Args:
            threshold: optional (qc,) per-query distances; the mask D <= threshold is then built
                tile by tile while the distances are still in cache.
            step: take every step-th database item only (a sample).

        Returns:
            D (qc, ceil(n / step)) of :attr:`dtype`, and with a threshold also the bool mask of the
            same shape.
        """
        database = self.words_t if step == 1 else self._sampled(step)  # (W, m)
        qc, m = query.shape[0], database.shape[1]
        out = np.empty((qc, m), self.dtype)
        mask = None if threshold is None else np.empty((qc, m), np.bool_)
        limit = None if threshold is None else threshold.astype(self.dtype)[:, None]  # (qc, 1)
        xor_popcount(query, database, out, limit, mask)
        return out if mask is None else (out, mask)

    def _sampled(self, step: int) -> np.ndarray:
        if step not in self._samples:
            self._samples[step] = np.ascontiguousarray(self.words_t[:, ::step])  # (W, n / step)
        return self._samples[step]

    def topk(self, query: np.ndarray, k: int, distances: bool = True):
        """The ``k`` nearest items of each query, ranked by (distance, database index).

        ``query``: uint64 (qc, W) words of at least one query; ``k`` >= 1. Returns distances
        (qc, min(k, n)) of :attr:`dtype` (None when ``distances`` is False: the metrics need only
        the order) and ids int64 (qc, min(k, n)), each row in rank order.
        """
        n, levels = self.n, self.levels
        qc = query.shape[0]
        if k >= n:  # the whole ranking: a stable radix sort of small unsigned ints
            D = self.distances(query)  # (qc, n)
            order = np.argsort(D, axis=1, kind="stable")
            return (np.take_along_axis(D, order, axis=1) if distances else None), order
        step = max(1, n // _SAMPLE_COLS)
        if step == 1:  # a small database: the threshold from all distances is exact
            D = self.distances(query)  # (qc, n)
            t = _threshold(D, k, n, levels)
            mask = None
        else:
            t = _threshold(self.distances(query, step=step), k, n, levels)
            D, mask = self.distances(query, threshold=t)  # (qc, n) each
        rows, cols = _candidates(D, k, t, mask)  # every row's top k are among them
        key = rows * levels + D.ravel()[rows * n + cols]
        # sort by (query, distance); stability keeps database index order inside a distance
        key = key.astype(np.uint16 if qc * levels <= 1 << 16 else np.int64)
        order = np.argsort(key, kind="stable")
        rows, cols = rows[order], cols[order]
        per_row = np.bincount(rows, minlength=qc)
        keep = np.arange(rows.size) - (np.cumsum(per_row) - per_row)[rows] < k  # rank < k: exactly k a row
        ids = cols[keep].reshape(qc, k)
        return (D.ravel()[rows[keep] * n + ids.ravel()].reshape(qc, k) if distances else None), ids


def _threshold(sample: np.ndarray, k: int, n: int, levels: int) -> np.ndarray:
    """Per-row distance t (qc,) meant to keep at least k of n items, from ``sample`` (qc, ns), the
    distances to every (n / ns)-th item: exact (the k-th smallest distance) when ns = n, else a
    little high (two standard deviations) so few rows fall short."""
    qc, ns = sample.shape
    keys = (np.arange(qc, dtype=np.intp) * levels)[:, None] + sample
    hist = np.bincount(keys.ravel(), minlength=qc * levels).reshape(qc, levels)
    need = k * ns / n
    if ns < n:
        need = min(need + 2.0 * np.sqrt(need), ns)
    return np.argmax(np.cumsum(hist, axis=1) >= need, axis=1).astype(sample.dtype)


def _candidates(D: np.ndarray, k: int, t: np.ndarray, mask: Optional[np.ndarray] = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cells (rows, cols int64 (m,), each row's cols increasing) with D[row, col] <= t[row] of D
    (qc, n), t (qc,) raised on rows that keep fewer than k; ``mask`` is D <= t if already computed.
    The result holds every row's k nearest items whatever the first t; a good t only saves work."""
    qc, n = D.shape
    t = t.copy()
    todo = np.arange(qc)
    found_rows, found_cols = [], []
    while todo.size:
        if todo.size < qc:
            sub = D[todo] <= t[todo, None]
        elif mask is None:
            sub = D <= t[:, None]
        else:
            sub, mask = mask, None  # the caller's mask holds for the first pass only
        flat = np.flatnonzero(sub)
        r = flat // n
        c = flat - r * n
        enough = np.bincount(r, minlength=todo.size) >= k
        keep = enough[r]
        found_rows.append(todo[r[keep]])
        found_cols.append(c[keep])
        todo = todo[~enough]
        t[todo] += 1  # never past the largest distance, where a row holds all n >= k items
    return np.concatenate(found_rows), np.concatenate(found_cols)


def hamming_distances(query, database) -> np.ndarray:
    """Hamming distances ``int32 (nq, n)`` between +-1 or packed codes ``(nq, .)`` and ``(n, .)``
    (a uint8 array reads as packed, anything else as strict +-1)."""
    qp, dp, _ = read_pair(query, database)
    return PackedDatabase(dp).distances(words(qp)).astype(np.int32)


def rank_rows(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of (dist, ids) (n, k) results found elsewhere (faiss) put in the project's order,
    by (distance, id), as :func:`hamming_topk` ranks; returns the two reordered (n, k) arrays."""
    order = np.lexsort((ids, dist), axis=1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ids, order, axis=1)


def hamming_topk(query, database, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database codes of each query by Hamming distance, ties by database index.

    Brute force (popcount of xor over every item), in chunks of queries so memory stays bounded.

    ``query``, ``database``: +-1 ``(nq, bits)`` / ``(n, bits)`` or packed uint8 ``(nq, B)`` /
    ``(n, B)``; ``k`` >= 0. Returns ``(distances int32 (nq, k'), ids int64 (nq, k'))`` with
    k' = min(k, n), rows in rank order.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"k must be a non-negative integer, got {k!r}")
    qp, dp, _ = read_pair(query, database)
    nq, kk = qp.shape[0], min(int(k), dp.shape[0])
    dist, ids = np.empty((nq, kk), np.int32), np.empty((nq, kk), np.int64)
    if nq == 0 or kk == 0:
        return dist, ids
    table, q = PackedDatabase(dp), words(qp)
    chunk = max(1, _CHUNK_CELLS // table.n)
    for s in range(0, nq, chunk):
        dist[s:s + chunk], ids[s:s + chunk] = table.topk(q[s:s + chunk], kk)
    return dist, ids
