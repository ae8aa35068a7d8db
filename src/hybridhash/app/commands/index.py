"""``hybridhash index``: build a HashIndex over a code collection and save it beside the manifest."""
from __future__ import annotations

from .options import add_option, from_bounds
from .vocabulary import add_collection

HELP = "build and save the search index of a code collection"
DESCRIPTION = ("Build a binary index over the codes of a collection written by `hybridhash encode` and save it "
               "(COLLECTION/index.faiss and its JSON sidecar by default), where `hybridhash search` and "
               "`hybridhash serve` find it. `flat` is exact; the other kinds are sub-linear and approximate.")


def configure(p):
    from hybridhash.configs import COUNT
    from hybridhash.index import KINDS

    add_collection(p, "--codes", help="the collection directory (from hybridhash encode)")
    p.add_argument("--kind", default="flat", choices=list(KINDS), help="index kind")
    add_option(p, "--nlist", type=from_bounds(COUNT), default=None, metavar="N",
               help="ivf: number of cells (None: chosen from the count)")
    add_option(p, "--nprobe", type=from_bounds(COUNT), default=None, metavar="N",
               help="ivf: cells scanned per query (None: the index default)")
    p.add_argument("--out", default=None, help="directory to save the index in (None: the collection directory)")


def run(args) -> int:
    import errno
    import time
    from pathlib import Path

    from hybridhash.collection import open_collection
    from hybridhash.errors import ConfigError, DataError
    from hybridhash.collection import INDEX_FILE
    from hybridhash.retrieval import build_index

    params = {k: v for k, v in (("nlist", args.nlist), ("nprobe", args.nprobe)) if v is not None}
    if params and args.kind == "flat":
        raise ConfigError(f"--{next(iter(params))} applies to ivf indexes, not flat")
    col = open_collection(args.collection)
    t0 = time.perf_counter()
    index = build_index(col, args.kind, **params)
    seconds = time.perf_counter() - t0
    path = Path(args.out if args.out is not None else col.directory) / INDEX_FILE
    try:
        index.save(path, fingerprint=col.fingerprint, codes_sha256=col.codes_sha256)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # save removed its partial files
            raise DataError(f"no space left on device while writing {path}: free space and rerun; "
                            f"no index was saved") from None
        raise
    print(f"{args.kind} index of {col.count} {col.bits}-bit codes: {index.memory_bytes()} bytes in memory, "
          f"built in {seconds:.2f} s, saved to {path}")
    return 0
