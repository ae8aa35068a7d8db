"""Memory of ``hybridhash serve`` under concurrent uploads of large images, against the same run of
the service as it was before its memory bounds.

A tiny collection is encoded with an untrained CPU preset, a flat-colour PNG of about 80 megapixels
is generated (it compresses to a few hundred KB, and decodes to 240 MB), and the real command,
``hybridhash serve``, is started on a free loopback port in a child process. Clients then upload
the PNG ``--concurrency`` at a time, ``--uploads`` times in all, while the server's resident memory
(VmRSS of /proc/PID/status) is sampled: idle before, the peak during, and after the last answer
(the lowest of the samples ``--settle`` seconds later).

Each round starts a fresh server of each kind, alternating, so all meet the same load on the shared
machine: ``bounded`` (this working tree's code), ``baseline`` (``--baseline-ref``'s ``src/``, taken
out with git into a temporary folder) and the baseline with ``MALLOC_ARENA_MAX=2`` in its
environment (the allocator setting alone). All traffic goes to 127.0.0.1.

    python benchmarks/bench_serve_memory.py [--rounds 2] [--uploads 32] [--concurrency 16]
                                            [--megapixels 80] [--baseline-ref REF]

Writes benchmarks/results/serve_memory.json and serve_memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # the collection is built by the code the bounded server runs
# the repository root, for tests.helpers: the service is started as its tests start it
sys.path.insert(0, str(REPO))
from tests.helpers.serving import serve_process  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

RESULTS = REPO / "benchmarks" / "results"
# the commit before the service's memory bounds: what the baseline runs
BASELINE_REF = "d9a6ece"


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of process ``pid`` in bytes, from /proc/PID/status: all resident memory, and
    the part that is not file pages (malloc's; the shared libraries' pages come and go with the
    page cache of a shared machine)."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon"):
                found[key] = int(line.split()[1]) * 1024
    if len(found) != 2:
        raise RuntimeError(f"no VmRSS or RssAnon for pid {pid}")
    return found["VmRSS"], found["RssAnon"]


class Sampler:
    """Samples a process's RSS every ``interval`` seconds on a thread; ``peak`` (VmRSS, RssAnon),
    each the highest since the last ``reset``."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = rss_bytes(self.pid)
            except (OSError, RuntimeError):
                return  # the process ended
            self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self.peak = rss_bytes(self.pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def build(tmp: Path, megapixels: float) -> tuple[Path, Path]:
    """A collection of 12 small images (encoded and indexed) and the large PNG; their paths."""
    import numpy as np
    import torch
    from PIL import Image

    import hybridhash
    from hybridhash.app import cli

    rng = np.random.default_rng(0)
    images = tmp / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    torch.manual_seed(0)
    hybridhash.create_model("hybridhash_cpu", bits=32).save_pretrained(str(tmp / "ckpt"))
    assert cli.main(["encode", "--checkpoint", str(tmp / "ckpt"), "--images", str(images),
                     "--collection", str(tmp / "codes"), "--workers", "0", "--no-progress"]) == 0
    assert cli.main(["index", "--collection", str(tmp / "codes")]) == 0
    width = int((megapixels * 1e6 * 5 / 4) ** 0.5)  # 5:4
    height = int(megapixels * 1e6 / width)
    big = tmp / "big.png"
    Image.new("RGB", (width, height), (90, 140, 200)).save(big)
    return tmp / "codes", big


def one_run(src: Path, codes: Path, payload: bytes, small: bytes, args, log: Path, extra_env: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1", **extra_env}
    options = ["--collection", codes, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
    with serve_process(options, log, env=env) as (pid, url):
        with httpx.Client(base_url=url, timeout=600) as c:  # one small search: the model is loaded and run
            c.post("/search", files={"image": ("small.png", small, "image/png")}).raise_for_status()
        time.sleep(1.0)
        idle = rss_bytes(pid)
        sampler = Sampler(pid)
        sampler.reset()
        statuses: list = []
        lock = threading.Lock()

        def upload(_) -> None:
            with httpx.Client(base_url=url, timeout=600) as c:
                r = c.post("/search", files={"image": ("big.png", payload, "image/png")})
            with lock:
                statuses.append(r.status_code)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(upload, range(args.uploads)))
        wall = time.perf_counter() - t0
        peak = sampler.peak
        sampler.close()
        settle = []
        for _ in range(int(args.settle / 0.25)):
            time.sleep(0.25)
            settle.append(rss_bytes(pid))
    after = min(settle)

    def mb(n: int) -> int:
        return round(n / 2**20)

    return {"idle_mb": mb(idle[0]), "peak_mb": mb(peak[0]), "after_mb": mb(after[0]),
            "idle_anon_mb": mb(idle[1]), "peak_anon_mb": mb(peak[1]), "after_anon_mb": mb(after[1]),
            "wall_s": round(wall, 1), "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


def baseline_src(ref: str, into: Path) -> Path:
    """``src/`` of commit ``ref`` of this repository, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


# the servers compared: (sources, extra environment); "baseline" sources are --baseline-ref's
KINDS = {
    "bounded": ("tree", {}),
    "baseline": ("baseline", {}),
    # the allocator setting alone, on the old service: the workaround a person could apply by hand
    "baseline+MALLOC_ARENA_MAX=2": ("baseline", {"MALLOC_ARENA_MAX": "2"}),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="servers started per kind, alternating")
    p.add_argument("--uploads", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--megapixels", type=float, default=80.0)
    p.add_argument("--settle", type=float, default=5.0, help="seconds of samples after the last answer")
    p.add_argument("--baseline-ref", default=BASELINE_REF, help="git commit whose src/ the baseline runs")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    p.add_argument("--out", default=str(RESULTS / "serve_memory.json"))
    args = p.parse_args(argv)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    result = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "uploads": args.uploads, "concurrency": args.concurrency, "megapixels": args.megapixels,
              "baseline_ref": args.baseline_ref, "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    runs: dict = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bench_serve_memory_") as tmp:
        tmp = Path(tmp)
        codes, big = build(tmp, args.megapixels)
        payload = big.read_bytes()
        small = (tmp / "images" / "00.png").read_bytes()
        from PIL import Image

        with Image.open(big) as img:
            result["image"] = {"width": img.width, "height": img.height, "png_bytes": len(payload)}
        sources = {"tree": REPO / "src"}
        if any(KINDS[k][0] == "baseline" for k in kinds):
            (tmp / "base").mkdir()
            sources["baseline"] = baseline_src(args.baseline_ref, tmp / "base")
        for r in range(args.rounds):
            for kind in kinds:
                src, env = KINDS[kind]
                row = one_run(sources[src], codes, payload, small, args, tmp / "serve.log", env)
                runs[kind].append(row)
                print(f"round {r} {kind}: {json.dumps(row)}", flush=True)
    result["runs"] = runs
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    # growth above idle, the worst round of each kind
    result["growth_mb"] = {k: {f"{m}{a}": max(row[f"{m}{a}_mb"] - row[f"idle{a}_mb"] for row in rows)
                               for m in ("peak", "after") for a in ("", "_anon")} for k, rows in runs.items()}
    if "bounded" in runs and "baseline" in runs:
        b, o = result["growth_mb"]["bounded"], result["growth_mb"]["baseline"]
        result["ratios"] = {key: round(b[key] / o[key], 3) if o[key] > 0 else None for key in b}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return result


def write_markdown(result: dict, args, path: Path) -> None:
    img = result["image"]
    lines = [
        f"# `hybridhash serve` memory under {args.concurrency} concurrent uploads of a "
        f"{img['width']}x{img['height']} PNG",
        "",
        f"{result['cpu']}, {result['cpu_count']} cores; load average {result['loadavg_before'][0]} before, "
        f"{result['loadavg_after'][0]} after (a shared machine). The PNG is {img['png_bytes'] // 1024} KB "
        f"(one flat colour) and decodes to {img['width'] * img['height'] * 3 // 2**20} MB of RGB. "
        f"{args.uploads} uploads per server, {args.concurrency} at a time, default options of `serve`. "
        f"Memory of the server process from /proc/PID/status: VmRSS (all resident memory) and RssAnon "
        f"(without file pages: malloc's part; the libraries' pages vary with the page cache of a shared "
        f"machine), idle after one small search, the peak during the uploads, and the lowest in the "
        f"{args.settle:g} s after the last answer. Baseline: the service at commit {result['baseline_ref']}, "
        f"before its memory bounds; the kinds alternate within each round.",
        "",
        "| round | server | idle MB | peak MB | after MB | idle anon MB | peak anon MB | after anon MB | wall s | answers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rounds = max(len(v) for v in result["runs"].values())
    for r in range(rounds):
        for kind, rows in result["runs"].items():
            if r < len(rows):
                row = rows[r]
                answers = ", ".join(f"{n} x {s}" for s, n in row["statuses"].items())
                lines.append(f"| {r} | {kind} | {row['idle_mb']} | {row['peak_mb']} | {row['after_mb']} | "
                             f"{row['idle_anon_mb']} | {row['peak_anon_mb']} | {row['after_anon_mb']} | "
                             f"{row['wall_s']} | {answers} |")
    lines += ["", "Growth above idle, worst round of each kind (MB):", "",
              "| server | peak | after | peak, anon | after, anon |", "|---|---|---|---|---|"]
    for kind, g in result["growth_mb"].items():
        lines.append(f"| {kind} | {g['peak']} | {g['after']} | {g['peak_anon']} | {g['after_anon']} |")
    if "ratios" in result:
        rt = result["ratios"]
        lines += [
            "",
            f"- Bounded / baseline, growth at the peak: {rt['peak']}x (VmRSS), {rt['peak_anon']}x (RssAnon).",
            f"- Bounded / baseline, memory still held after the uploads: {rt['after']}x (VmRSS), "
            f"{rt['after_anon']}x (RssAnon); a negative figure is a server below its idle level.",
        ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
