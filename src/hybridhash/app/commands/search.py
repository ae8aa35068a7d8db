"""``hybridhash search``: the nearest items of a collection for query images, as a table or JSON."""
from __future__ import annotations

import json

from ...terminal import printable
from .options import add_runtime_option

HELP = "search an indexed collection with query images"


def configure(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument("--index", required=True, help="the collection directory (encoded, optionally indexed)")
    p.add_argument("--k", type=int, default=10, help="results per query (at most 1000000)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the one the manifest names)")
    p.add_argument("--kind", default=None, help="index kind (default: the saved index, else flat)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_runtime_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def format_table(rows: list) -> str:
    """Rows of equal length (the first is the header) as aligned columns; numbers right-aligned; text
    cells :func:`~hybridhash.terminal.printable`."""
    rows = [[v if isinstance(v, int) else printable(v) for v in r] for r in rows]
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    numeric = [all(isinstance(r[c], int) for r in rows[1:]) for c in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [str(v).rjust(w) if num else str(v).ljust(w) for v, w, num in zip(r, widths, numeric)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run(args) -> int:
    from hybridhash.index import check_k
    from hybridhash.retrieval import Retriever

    check_k(args.k, "--k")  # before the model and index are loaded
    from hybridhash.runtime import device_option

    args.device = device_option(args.device)  # a one-line error for an unknown or absent device
    retriever = Retriever.open(args.index, checkpoint=args.checkpoint, device=args.device, kind=args.kind,
                               runtime=args.runtime)
    results = retriever.search(list(args.images), k=args.k)
    if args.json:
        print(json.dumps({"index": str(retriever.collection.directory), "k": args.k,
                          "results": [{"query": q, "hits": [h.to_dict() for h in hits]}
                                      for q, hits in zip(args.images, results)]}, indent=2))
        return 0
    rows = [("query", "rank", "distance", "path", "label")]
    for q, hits in zip(args.images, results):
        rows += [(q, h.rank, h.distance, h.path, "" if h.label is None else h.label) for h in hits]
    print(format_table(rows))
    return 0
