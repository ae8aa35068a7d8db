"""Service latency: the HTTP search endpoint against the in-process ``Retriever.search`` it wraps.

A synthetic image collection is encoded with an untrained preset (weights do not change the cost)
and indexed, then served on loopback by the real command, ``hybridhash serve``, in its own process
(so the clients here do not share an interpreter with the server). Measured in the same run:

- in-process ``Retriever.search`` on the uploaded bytes (decode + preprocess + forward + index),
  one query at a time, and from 8 threads at once: the baselines;
- ``POST /search`` one request at a time (the ratio to the first baseline is the HTTP overhead);
- the load test, 8 concurrent clients x 50 searches, with the service's batching of concurrent
  queries into one forward (the default) and without it (``--max-batch 1``).

    python benchmarks/bench_service.py [--count 1000] [--preset hybridhash_cpu] [--clients 8] [--per-client 50]

Writes benchmarks/results/service.json and service.md. Takes two to three minutes with the CPU preset.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash.retrieval import Retriever

# the repository root, for tests.helpers: the service is started as its tests start it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.serving import serve_process  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_images(root: Path, count: int, size: int, seed: int = 0) -> list:
    """``count`` PNG images of coloured blocks plus noise in 10 class folders; their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))  # (size, size, 3)
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def summarise(seconds: list, wall: float) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"requests": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2),
            "requests_per_s": round(ms.size / wall, 1)}


def sequential(call, queries: list, n: int) -> dict:
    """``n`` calls one after another, on a thread of their own: the service runs its forwards on a
    worker thread, and torch on the main thread can behave differently (its OpenMP team spins)."""
    out = {}

    def run() -> None:
        try:
            for q in queries[:5]:  # warm-up
                call(q)
            times = []
            t0 = time.perf_counter()
            for i in range(n):
                s = time.perf_counter()
                call(queries[i % len(queries)])
                times.append(time.perf_counter() - s)
            out["row"] = summarise(times, time.perf_counter() - t0)
        except Exception as err:
            out["error"] = err

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["row"]


def concurrent(make_call, queries: list, clients: int, per_client: int) -> dict:
    """``clients`` threads, each with its own ``make_call()``, ``per_client`` calls each, all must succeed."""
    times, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        call, close = make_call()
        mine = []
        try:
            barrier.wait()
            for j in range(per_client):
                s = time.perf_counter()
                try:
                    call(queries[(c * per_client + j) % len(queries)])
                except Exception as err:  # counted, reported, and fatal below
                    errors.append(repr(err))
                mine.append(time.perf_counter() - s)
        finally:
            close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients * per_client} requests failed, e.g. {errors[0]}")
    return summarise(times, wall)


def http_caller(url: str, k: int):
    def make():
        client = httpx.Client(base_url=url, timeout=120)

        def call(data: bytes) -> None:
            r = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": str(k)})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            r.json()
        return call, client.close
    return make


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="hybridhash_cpu")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--count", type=int, default=1000, help="images in the collection")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=50)
    p.add_argument("--sequential", type=int, default=200, help="requests of the one-at-a-time runs")
    p.add_argument("--out", default=str(RESULTS / "service.json"))
    args = p.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    torch.manual_seed(0)
    result = {"preset": args.preset, "bits": args.bits, "count": args.count, "k": args.k,
              "clients": args.clients, "per_client": args.per_client, "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "python": platform.python_version(), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bench_service_") as tmp:
        tmp = Path(tmp)
        model = hybridhash.create_model(args.preset, bits=args.bits)
        size = model.config.img_size
        paths = make_images(tmp / "images", args.count, size)
        model.save_pretrained(str(tmp / "ckpt"))
        t0 = time.perf_counter()
        assert cli.main(["encode", "--checkpoint", str(tmp / "ckpt"), "--images", str(tmp / "images"),
                         "--collection", str(tmp / "codes"), "--no-progress"]) == 0
        assert cli.main(["index", "--collection", str(tmp / "codes")]) == 0
        result["encode_and_index_s"] = round(time.perf_counter() - t0, 2)
        retriever = Retriever.open(tmp / "codes")
        result["index"] = getattr(retriever.index, "kind", None)
        queries = [paths[i].read_bytes() for i in range(0, args.count, max(1, args.count // 64))]
        result["query_bytes_mean"] = int(np.mean([len(q) for q in queries]))

        def inproc(data: bytes) -> None:
            retriever.search([data], k=args.k)

        runs = {}

        def record(name: str, row: dict) -> None:
            runs[name] = row
            print(f"{name:34s} {json.dumps(row)}", flush=True)

        record("in-process, sequential", sequential(inproc, queries, args.sequential))
        record(f"in-process, {args.clients} threads",
               concurrent(lambda: (inproc, lambda: None), queries, args.clients, args.per_client))
        for label, max_batch in (("batched", 16), ("unbatched", 1)):
            options = ["--collection", tmp / "codes", "--port", "0", "--max-batch", max_batch, "--log-level", "warning"]
            with serve_process(options, tmp / "serve.log") as (_, url):
                caller = http_caller(url, args.k)
                if label == "batched":
                    call, close = caller()
                    record("HTTP, sequential", sequential(call, queries, args.sequential))
                    close()
                s0 = httpx.get(url + "/health").json()["stats"]
                row = concurrent(caller, queries, args.clients, args.per_client)
                s1 = httpx.get(url + "/health").json()["stats"]
                row["queries_per_forward"] = round((s1["searches"] - s0["searches"])
                                                   / max(1, s1["forwards"] - s0["forwards"]), 2)
                record(f"HTTP, {args.clients} clients, {label}", row)
        result["runs"] = runs
    base_seq = runs["in-process, sequential"]
    base_conc = runs[f"in-process, {args.clients} threads"]
    http_seq = runs["HTTP, sequential"]
    batched = runs[f"HTTP, {args.clients} clients, batched"]
    unbatched = runs[f"HTTP, {args.clients} clients, unbatched"]
    result["ratios"] = {
        "http_overhead_p50": round(http_seq["p50_ms"] / base_seq["p50_ms"], 3),
        "http_overhead_ms_p50": round(http_seq["p50_ms"] - base_seq["p50_ms"], 2),
        "load_throughput_vs_in_process_threads": round(batched["requests_per_s"] / base_conc["requests_per_s"], 3),
        "batched_vs_unbatched_throughput": round(batched["requests_per_s"] / unbatched["requests_per_s"], 3),
        "batched_vs_unbatched_p99": round(batched["p99_ms"] / unbatched["p99_ms"], 3),
    }
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        f"# Search service latency ({args.preset}, {args.bits} bits, {args.count} images, k = {args.k})",
        "",
        f"{result['cpu_count']} CPU cores, {result['torch_threads']} torch threads, {result['index']} index; "
        f"load average {result['loadavg_before'][0]} before, {result['loadavg_after'][0]} after "
        f"(a shared machine: compare the rows, not the absolute times). Every request succeeded.",
        "",
        "| run | requests | p50 ms | p99 ms | requests/s | queries per forward |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests_per_s']} | "
                     f"{r.get('queries_per_forward', '')} |")
    rt = result["ratios"]
    lines += [
        "",
        f"- HTTP overhead, one request at a time: p50 {rt['http_overhead_p50']}x the in-process search "
        f"(+{rt['http_overhead_ms_p50']} ms: multipart parsing, the JSON answer, loopback TCP).",
        f"- Under load, the service serves {rt['load_throughput_vs_in_process_threads']}x the requests/s of "
        f"{args.clients} threads calling `Retriever.search` directly.",
        f"- Batching concurrent queries into one forward: {rt['batched_vs_unbatched_throughput']}x the "
        f"throughput of one forward per request, p99 {rt['batched_vs_unbatched_p99']}x.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
