"""Figures and the HTML report of an evaluation: PR curves, precision@N, mAP against code length,
and the retrieval picture (queries with their top results, framed green when relevant, red when not).

Plots use matplotlib's Agg backend (no display needed); the retrieval picture is drawn with PIL.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_path

GREEN = (34, 160, 60)
RED = (210, 40, 40)
GREY = (90, 90, 90)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _line_styles(names: Sequence[str], dashed: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """A distinct look per name: colours of tab20 with a marker and line style that change every 20
    names (matplotlib's default cycle repeats after 10, so a roster of 23 would share colours);
    floors (``dashed``) grey and dashed."""
    plt = _pyplot()
    colours = plt.get_cmap("tab20").colors
    markers, lines = "osD^v", ("-", "-.", ":")
    looks, k = {}, 0
    for name in names:
        if name in dashed:
            looks[name] = dict(linestyle="--", color="grey", marker="o")
            continue
        looks[name] = dict(color=colours[k % 20], marker=markers[(k // 20) % len(markers)],
                           linestyle=lines[(k // 20) % len(lines)])
        k += 1
    return looks


def _legend(ax, n: int) -> None:
    """Inside the axes for a few lines; beside them, in columns, for a roster (a legend over 10 lines
    would hide the curves)."""
    if n <= 10:
        ax.legend(fontsize="small")
    else:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1 + n // 16,
                  borderaxespad=0.0)


def plot_pr_curves(results: Mapping[int, Dict[str, Any]], path: os.PathLike, title: str = "") -> Path:
    """Precision against recall of Hamming-ball retrieval, one line per code length.

    ``results``: {bits: metrics dict with ``pr_curve`` {radius, precision, recall}}.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for bits in sorted(results):
        pr = results[bits]["pr_curve"]
        ax.plot(pr["recall"], pr["precision"], marker=".", markersize=3, label=f"{bits} bits")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "precision-recall over Hamming radius")
    return _save(fig, path)


def plot_precision_at_n(results: Mapping[int, Dict[str, Any]], path: os.PathLike, title: str = "") -> Path:
    """Precision of the first N results against N (log scale), one line per code length."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for bits in sorted(results):
        pn = results[bits]["precision_at_n"]
        ax.plot(pn["n"], pn["precision"], marker="o", markersize=3, label=f"{bits} bits")
    ax.set_xscale("log")
    ax.set_xlabel("N (results returned)")
    ax.set_ylabel("precision@N")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title or "precision@N")
    return _save(fig, path)


def plot_map_vs_bits(series: Mapping[str, Mapping[int, float]], path: os.PathLike, ylabel: str = "mAP",
                     title: str = "") -> Path:
    """mAP against code length, one line per method: ``series`` = {name: {bits: value}}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    all_bits = sorted({b for s in series.values() for b in s})
    for name, values in series.items():
        bits = sorted(values)
        ax.plot(bits, [values[b] for b in bits], marker="o", label=name)
    ax.set_xticks(all_bits)
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"{ylabel} against code length")
    return _save(fig, path)


def plot_mean_std_vs_bits(series: Mapping[str, Mapping[int, Sequence[Optional[float]]]], path: os.PathLike,
                          ylabel: str = "mAP", title: str = "", dashed: Sequence[str] = ()) -> Path:
    """Mean against code length with +-std error bars, one line per name: ``series`` = {name: {bits:
    (mean, std or None)}}; names in ``dashed`` (floors) are drawn as dashed grey lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    all_bits = sorted({b for s in series.values() for b in s})
    looks = _line_styles(list(series), dashed)
    for name, values in series.items():
        bits = sorted(values)
        means = [values[b][0] for b in bits]
        stds = [values[b][1] or 0.0 for b in bits]
        ax.errorbar(bits, means, yerr=stds, markersize=4, capsize=3, label=name, **looks[name])
    ax.set_xticks(all_bits)
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax, len(series))
    ax.set_title(title or f"{ylabel} against code length")
    return _save(fig, path)


def plot_pr_by_name(curves: Mapping[str, Dict[str, Sequence[float]]], path: os.PathLike, title: str = "",
                    dashed: Sequence[str] = ()) -> Path:
    """Precision against recall of Hamming-ball retrieval, one line per name: ``curves`` = {name:
    ``pr_curve`` {radius, precision, recall}}; names in ``dashed`` drawn dashed grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    looks = _line_styles(list(curves), dashed)
    for name, pr in curves.items():
        ax.plot(pr["recall"], pr["precision"], markersize=3, label=name, **looks[name])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax, len(curves))
    ax.set_title(title or "precision-recall over Hamming radius")
    return _save(fig, path)


def _tile(img: Image.Image, size: int, frame: Optional[tuple], border: int) -> Image.Image:
    # nearest keeps small images (8x8 digits) crisp instead of blurred
    resample = Image.NEAREST if max(img.size) * 2 <= size else Image.BILINEAR
    img = img.convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
    tile = Image.new("RGB", (size + 2 * border, size + 2 * border), frame or (255, 255, 255))
    tile.paste(img, (border + (size - img.width) // 2, border + (size - img.height) // 2))
    return tile


def retrieval_picture(query_images: Sequence[Image.Image], results: Sequence[Sequence[Image.Image]],
                      relevant: Sequence[Sequence[bool]], path: os.PathLike, *, tile: int = 64,
                      query_captions: Optional[Sequence[str]] = None,
                      result_captions: Optional[Sequence[Sequence[str]]] = None) -> Path:
    """One row per query: the query (grey frame), then its ranked results framed green (relevant)
    or red (not relevant).

    Args:
        query_images: n PIL images.
        results: n lists of k PIL images, in rank order.
        relevant: n lists of k booleans.
        tile: edge of each image in pixels.
    """
    n = len(query_images)
    k = max((len(r) for r in results), default=0)
    border, gap, text_h = max(3, tile // 16), max(6, tile // 6), 14
    cell = tile + 2 * border
    width = cell * (k + 1) + gap * (k + 1) + gap
    height = n * (cell + text_h + gap) + gap + text_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 2), "query", fill=GREY)
    for j in range(k):
        draw.text((gap + (j + 1) * (cell + gap) + gap // 2, 2), f"#{j + 1}", fill=GREY)
    for i in range(n):
        y = text_h + gap + i * (cell + text_h + gap)
        canvas.paste(_tile(query_images[i], tile, GREY, border), (gap, y))
        if query_captions:
            draw.text((gap, y + cell + 1), str(query_captions[i])[:12], fill=GREY)
        for j, (img, ok) in enumerate(zip(results[i], relevant[i])):
            x = gap + (j + 1) * (cell + gap) + gap // 2
            canvas.paste(_tile(img, tile, GREEN if ok else RED, border), (x, y))
            if result_captions:
                draw.text((x, y + cell + 1), str(result_captions[i][j])[:12], fill=GREEN if ok else RED)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def pick_queries(labels: np.ndarray, n: int) -> List[int]:
    """``n`` query rows spread over the classes: the first query of each class in turn, then the next.

    ``labels``: (nq, C) multi-hot or (nq,) class ids. Deterministic.
    """
    labels = np.asarray(labels)
    first = labels.argmax(1) if labels.ndim == 2 else labels
    order: List[int] = []
    by_class = {c: list(np.flatnonzero(first == c)) for c in np.unique(first)}
    while len(order) < min(n, len(first)):
        for c in sorted(by_class):
            if by_class[c] and len(order) < n:
                order.append(int(by_class[c].pop(0)))
    return order


def write_html(path: os.PathLike, title: str, sections: Sequence[Dict[str, Any]]) -> Path:
    """A self-contained HTML page (figures linked by relative path).

    ``sections``: dicts with ``heading`` and any of ``text`` (str), ``table`` ({"columns": [...],
    "rows": [[...], ...]}), ``images`` ([relative path, ...]) and ``pre`` (preformatted text).
    """
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .7em;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%;margin:.4em .4em .4em 0;vertical-align:top}pre{background:#f6f6f6;padding:.6em;"
             "overflow-x:auto}.note{color:#555}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{esc(s['heading'])}</h2>")
        if s.get("text"):
            parts.append(f"<p class='note'>{esc(s['text'])}</p>")
        if s.get("table"):
            t = s["table"]
            parts.append("<table><tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in t["columns"]) + "</tr>")
            for row in t["rows"]:
                parts.append("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        for img in s.get("images", []):
            parts.append(f"<img src='{esc(str(img))}' alt='{esc(Path(str(img)).stem)}'>")
        if s.get("pre"):
            parts.append(f"<pre>{esc(s['pre'])}</pre>")
    parts.append("</body></html>\n")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)
