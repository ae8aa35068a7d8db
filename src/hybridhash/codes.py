"""The binary code format, for the whole project: code lengths, the sign rule, packing, popcount
and Hamming distances. Every other module (metrics, index, encoder, service) uses these.

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
    "xor_popcount", "hamming_distances",
]

MIN_BITS, MAX_BITS = 8, 256

# numpy >= 2 has a native popcount; set to False to run the SWAR fallback (what numpy 1.x gets)
USE_BITWISE_COUNT: bool = hasattr(np, "bitwise_count")

# uint64 cells per xor tile: 1 MiB, so the xor buffer stays in cache between xor and popcount
_TILE_CELLS = 1 << 17


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
            "(binarise with `where(u >= 0, 1, -1)`; 0/1 bits must be packed with pack_codes)"
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
    """Hamming distances of word-packed codes, tile by tile, into ``out``.

    Args:
        query: uint64 (qc, W) words (see :func:`words`).
        database_t: uint64 (W, n), one row per word (the database's words transposed).
        out: (qc, n) unsigned integers that hold 64 * W (see :func:`distance_dtype`).
        threshold: optional (qc, 1) per-query distances; ``mask`` (qc, n) bool then receives
            ``out <= threshold``, built while the tile is still in cache.

    Returns:
        ``out``.
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


def hamming_distances(query_packed: np.ndarray, database_packed: np.ndarray) -> np.ndarray:
    """Hamming distances ``int32 (nq, ndb)`` between packed codes ``(nq, B)`` and ``(ndb, B)``."""
    q = np.ascontiguousarray(query_packed, dtype=np.uint8)
    d = np.ascontiguousarray(database_packed, dtype=np.uint8)
    if q.ndim != 2 or d.ndim != 2:
        raise DataError(f"packed codes must be 2-D (n, bytes), got shapes {q.shape} and {d.shape}")
    if q.shape[1] != d.shape[1]:
        raise IndexMismatchError(f"query codes have {q.shape[1]} packed bytes but database codes have {d.shape[1]}")
    out = np.empty((q.shape[0], d.shape[0]), distance_dtype(q.shape[1]))
    xor_popcount(words(q), np.ascontiguousarray(words(d).T), out)
    return out.astype(np.int32)
