"""Passes over training features for the shallow baselines: checked batches, progress, the streamed
mean and scatter matrix, and the principal directions with their sign rule.

Features arrive as ``batches()``, a callable that returns a fresh iterator of (B, d) tensors on
every call, so a fitter takes as many passes as it needs without holding the training set.
Everything is accumulated in float64.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from ...errors import ConfigError, DataError
from ...limits import MAX_COVARIANCE_FEATURES

__all__ = ["Progress", "FeatureStream", "check_features", "check_feature_count", "moments", "principal_directions",
           "fix_signs"]

# progress(stage, rows or steps just done, total of the stage or None)
Progress = Callable[[str, int, Optional[int]], None]


class _Bars:
    """``progress=True``: one tqdm bar per stage, closed when the fit ends."""

    def __init__(self) -> None:
        self.bars = {}

    def __call__(self, stage: str, done: int, total: Optional[int]) -> None:
        if stage not in self.bars:
            from tqdm.auto import tqdm

            self.bars[stage] = tqdm(total=total, desc=stage, leave=False)
        self.bars[stage].update(done)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def check_feature_count(name: str, n_features, covariance: bool) -> int:
    """``n_features`` as a positive int; with ``covariance``, refused above MAX_COVARIANCE_FEATURES
    (the float64 d x d matrix and its eigen-decomposition take about 3 * 8 * d^2 bytes)."""
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ConfigError(f"{name}: n_features must be a positive integer, got {n_features!r}")
    if covariance and n_features > MAX_COVARIANCE_FEATURES:
        gib = 3 * 8 * n_features ** 2 / 2 ** 30
        raise ConfigError(f"{name}: {n_features} features need about {gib:.0f} GiB for the covariance and its "
                          f"eigenvectors; at most {MAX_COVARIANCE_FEATURES} features are accepted (use smaller "
                          "images or a backbone's pooled features)")
    return n_features


def check_features(where: str, x, n_features: int, device: torch.device) -> Tensor:
    """``x`` as float64 (B, n_features) on ``device``, or a one-line DataError that starts with ``where``:
    not an array, not real numbers, another shape, or a non-finite value (its row and column named)."""
    try:
        x = torch.as_tensor(x)
    except Exception as err:  # ragged lists and the like
        raise DataError(f"{where} is not an array ({' '.join(str(err).split())})") from None
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"{where} has dtype {x.dtype}; expected real numbers")
    if x.dim() != 2 or x.shape[1] != n_features:
        raise DataError(f"{where} has shape {tuple(x.shape)}, expected (B, {n_features})")
    x = x.to(device, torch.float64)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row, col = (int(v) for v in bad.nonzero()[0])
        raise DataError(f"{where} holds a non-finite value at row {row}, column {col}; "
                        "fix or drop that image's features")
    return x


class FeatureStream:
    """Checked passes over ``batches()``: each batch as float64 (B, d) on ``device``.

    Every batch must be a real 2-D array of width ``n_features`` with finite values (a one-line
    DataError names the batch otherwise), and every pass must give as many rows as the first.
    """

    def __init__(self, name: str, batches: Callable[[], Iterator], n_features: int,
                 device: torch.device, progress: Union[None, bool, Progress] = None) -> None:
        if not callable(batches):
            raise ConfigError(f"{name}: batches must be a callable returning a fresh iterator of (B, "
                              f"{n_features}) feature tensors, got {type(batches).__name__}")
        self.name, self.batches, self.d, self.device = name, batches, n_features, device
        self._bars = _Bars() if progress is True else None
        self.progress: Optional[Progress] = self._bars or (progress if callable(progress) else None)
        self.rows: Optional[int] = None  # rows of the first pass

    def close(self) -> None:
        if self._bars is not None:
            self._bars.close()

    def report(self, stage: str, done: int, total: Optional[int]) -> None:
        if self.progress is not None:
            self.progress(f"{self.name}: {stage}", done, total)

    def epoch(self, stage: str) -> Iterator[Tensor]:
        """One pass: checked float64 batches (B, d); the row count is checked against the first pass."""
        rows = 0
        iterator = self.batches()
        try:
            iterator = iter(iterator)
        except TypeError:
            raise ConfigError(f"{self.name}: batches() must return an iterator of feature batches, "
                              f"got {type(iterator).__name__}") from None
        for i, x in enumerate(iterator):
            x = check_features(f"{self.name}: features batch {i}", x, self.d, self.device)
            rows += x.shape[0]
            if self.rows is not None and rows > self.rows:
                break
            yield x
            self.report(stage, x.shape[0], self.rows)
        if self.rows is None:
            if rows < 2:
                raise DataError(f"{self.name}: fitting needs at least 2 training rows, got {rows}")
            self.rows = rows
        elif rows != self.rows:
            got = f"more than {self.rows}" if rows > self.rows else str(rows)
            raise DataError(f"{self.name}: a later pass over the training features gave {got} rows, the first "
                            f"{self.rows}: batches() must give the same rows on every call")


def moments(stream: FeatureStream, scatter: bool = True) -> Tuple[int, Tensor, Optional[Tensor]]:
    """(n, mean (d,), scatter (d, d) = sum_i (x_i - mean)(x_i - mean)^T or None) in one pass.

    Rows are first shifted by the first row seen, then each batch is centred on its own mean and
    merged with the running totals by the pairwise update of Chan, Golub and LeVeque (1979): no sum
    of raw squares is ever formed, so features far from the origin (pixels around 0.5, ReLU
    outputs, an offset of 1e6) keep their variance's digits.
    """
    n = 0
    mean = torch.zeros(stream.d, dtype=torch.float64, device=stream.device)  # of the shifted rows
    m2 = torch.zeros(stream.d, stream.d, dtype=torch.float64, device=stream.device) if scatter else None
    shift = None
    for x in stream.epoch("mean and covariance" if scatter else "mean"):
        b = x.shape[0]
        if b == 0:
            continue
        if shift is None:
            shift = x[0].clone()
        x = x - shift
        mean_b = x.mean(0)
        delta = mean_b - mean
        total = n + b
        if m2 is not None:
            centred = x - mean_b
            m2 += centred.t() @ centred
            m2 += torch.outer(delta, delta) * (n * b / total)
        mean += delta * (b / total)
        n = total
    if m2 is not None:
        m2 = (m2 + m2.t()) / 2  # exact symmetry, whichever triangle the eigen-solver reads
    return n, mean + shift, m2


def fix_signs(vectors: Tensor) -> Tensor:
    """Columns of ``vectors`` (d, k) flipped so that each one's largest-magnitude entry (the first of
    equal ones) is positive: an eigenvector's sign is arbitrary, and this makes it reproducible."""
    top = vectors.abs().argmax(0)  # (k,)
    signs = torch.where(vectors[top, torch.arange(vectors.shape[1], device=vectors.device)] < 0, -1.0, 1.0)
    return vectors * signs.to(vectors.dtype)


def principal_directions(scatter: Tensor, n: int, k: int) -> Tuple[Tensor, Tensor]:
    """(eigenvalues (k,), directions (d, k)): the top ``k`` eigenpairs of the covariance
    ``scatter / (n - 1)`` in decreasing order (a stable sort, so equal eigenvalues keep the
    solver's order), each direction's sign fixed by :func:`fix_signs`. float64."""
    values, vectors = torch.linalg.eigh(scatter / (n - 1))  # ascending
    order = torch.sort(values, descending=True, stable=True).indices[:k]
    return values[order].contiguous(), fix_signs(vectors[:, order]).contiguous()
