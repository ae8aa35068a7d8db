"""``hybridhash search``: the nearest items of a collection for query images, as a table or JSON."""
from __future__ import annotations

import json

from ...terminal import printable
from .options import Bounded, add_option, add_precision_option, add_runtime_option
from .vocabulary import add_collection, add_image_root, add_max_pixels

HELP = "search an indexed collection with query images"


def k_type(high: int) -> Bounded:
    """The ``type`` of a number of results: 1 to ``high``, checked as the index checks ``k``."""
    from hybridhash.configs import Bounds
    from hybridhash.index import check_k

    return Bounded(int, Bounds(1, high, integer=True), check=lambda k, name: check_k(k, name))


def configure(p):
    from hybridhash.limits import K_CAP

    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    add_collection(p, "--index", help="the collection directory (encoded, optionally indexed)")
    add_option(p, "--k", type=k_type(K_CAP), default=10, help=f"results per query (at most {K_CAP})")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the one the manifest names)")
    p.add_argument("--kind", default=None, help="index kind (default: the saved index, else flat)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_runtime_option(p)
    add_precision_option(p, "the runtime and precision the collection was encoded with (another one asked for "
                            "runs, with a warning that codes may differ)")
    add_image_root(p, help="the folder the collection's image paths start from, when its manifest records none "
                           "or the images moved (unset: the manifest's)")
    add_max_pixels(p, "refuse query images with more pixels (width * height) than this, unread")
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
    from hybridhash.retrieval import Retriever
    from hybridhash.environment import device_option

    args.device = device_option(args.device)  # a one-line error for an unknown or absent device
    retriever = Retriever.open(args.collection, checkpoint=args.checkpoint, device=args.device, kind=args.kind,
                               runtime=args.runtime, precision=args.precision, max_pixels=args.max_pixels,
                               root=args.image_root)
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
