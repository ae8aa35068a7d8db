"""``hybridhash index``: build a HashIndex over a code collection and save it beside the manifest."""
from __future__ import annotations

from .options import add_option, from_bounds
from .vocabulary import add_collection

HELP = "build and save the search index of a code collection"
DESCRIPTION = ("Build a binary index over the codes of a collection written by `hybridhash encode` and save it "
               "(index.faiss and its JSON sidecar beside the current generation's files by default), where "
               "`hybridhash search` and `hybridhash serve` find it; `hybridhash encode` carries it to later "
               "generations. `flat` is exact; the other kinds are sub-linear and approximate.")


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

    from contextlib import ExitStack

    from hybridhash.collection import INDEX_FILE, open_collection
    from hybridhash.errors import ConfigError, DataError
    from hybridhash.locking import exclusive
    from hybridhash.retrieval import build_index

    params = {k: v for k, v in (("nlist", args.nlist), ("nprobe", args.nprobe)) if v is not None}
    if params and args.kind == "flat":
        raise ConfigError(f"--{next(iter(params))} applies to ivf indexes, not flat")
    with ExitStack() as lock:
        if args.out is None:  # written into the collection: one writer at a time (an update moves generations)
            open_collection(args.collection).close()  # refused in one line when it is no collection
            lock.enter_context(exclusive(args.collection, what="code collection"))
        col = open_collection(args.collection)
        t0 = time.perf_counter()
        index = build_index(col, args.kind, **params)
        seconds = time.perf_counter() - t0
        path = col.index_path if args.out is None else Path(args.out) / INDEX_FILE
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
