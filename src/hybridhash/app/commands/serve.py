"""``hybridhash serve``: an indexed collection over HTTP, a JSON API and a web page."""
from __future__ import annotations

from ...terminal import printable
from .options import add_option, add_precision_option, add_runtime_option, bounded
from .vocabulary import add_collection, add_image_root, add_max_pixels

HELP = "serve an indexed collection over HTTP: a search API and a web page"
DESCRIPTION = (
    "Serve a collection made by `hybridhash encode` (and `hybridhash index`): POST /search with an "
    "uploaded image, GET /items/{id} for a stored image or its thumbnail, GET /health, the API docs "
    "at /docs and a web page at / where an image is dropped and its nearest images shown. Listens on "
    "127.0.0.1 unless --host says otherwise, and answers only requests addressed to 127.0.0.1, localhost, "
    "[::1], the --host name and --allowed-host names; uploads are limited in bytes and in pixels.")


def configure(p):
    from hybridhash.limits import BODY_TIMEOUT as DEFAULT_BODY_TIMEOUT, KEEP_ALIVE_TIMEOUT as DEFAULT_KEEP_ALIVE_TIMEOUT
    from hybridhash.limits import FOLLOW_INTERVAL as DEFAULT_FOLLOW_INTERVAL
    from hybridhash.limits import K_CAP, MAX_BATCH_CAP, MAX_DECODES_CAP, MAX_REQUESTS_CAP, MAX_TIMEOUT
    from hybridhash.limits import MAX_BATCH as DEFAULT_MAX_BATCH, MAX_DECODES as DEFAULT_MAX_DECODES
    from hybridhash.limits import MAX_K as DEFAULT_MAX_K
    from hybridhash.limits import MAX_REQUESTS as DEFAULT_MAX_REQUESTS, MAX_UPLOAD_BYTES as DEFAULT_MAX_UPLOAD_BYTES
    from hybridhash.limits import UPLOAD_BYTES_CAP

    from .search import k_type

    add_collection(p, "--index", help="the collection directory (encoded, optionally indexed)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory; none: the one the manifest names")
    p.add_argument("--kind", default=None, help="index kind; none: the saved index, else flat")
    add_image_root(p, help="the folder the collection's image paths start from, when the images moved since "
                           "encoding (unset: the manifest's)", old=("--root",))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_runtime_option(p)
    add_precision_option(p, "the runtime and precision the collection was encoded with (another one asked for "
                            "runs, with a warning that codes may differ)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens the service (and the images) to the network")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (a host name, an IP address, or "
                        "*.example.org for its subdomains; repeatable); the service always answers "
                        "127.0.0.1, localhost, [::1] and the --host name, nothing else, so a web page that "
                        "points its own domain at this address cannot read it")
    add_option(p, "--port", type=bounded(int, 0, 65535), default=8000, help="TCP port (0: any free port)")
    add_option(p, "--max-upload-mb", type=bounded(float, 0, UPLOAD_BYTES_CAP // 2**20, low_open=True),
               default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
               help=f"largest accepted upload, in MB (at most {UPLOAD_BYTES_CAP // 2**20})")
    add_max_pixels(p, "largest accepted image (width * height), checked before decoding")
    add_option(p, "--max-k", type=k_type(K_CAP), default=DEFAULT_MAX_K,
               help=f"most results one search may ask for (at most {K_CAP})")
    add_option(p, "--max-batch", type=bounded(int, 1, MAX_BATCH_CAP), default=DEFAULT_MAX_BATCH,
               help="most concurrent queries encoded in one model forward")
    add_option(p, "--max-decodes", type=bounded(int, 1, MAX_DECODES_CAP), default=DEFAULT_MAX_DECODES,
               help="most images decoded at once (each may take hundreds of MB while decoded)")
    add_option(p, "--max-requests", type=bounded(int, 1, MAX_REQUESTS_CAP), default=DEFAULT_MAX_REQUESTS,
               help="most requests answered at once; more get 503 with Retry-After")
    add_option(p, "--body-timeout", type=bounded(float, 0, MAX_TIMEOUT, low_open=True), default=DEFAULT_BODY_TIMEOUT,
               help="seconds an upload may stall before the request gets 408 and is closed")
    add_option(p, "--keep-alive-timeout", type=bounded(int, 1, MAX_TIMEOUT), default=DEFAULT_KEEP_ALIVE_TIMEOUT,
               help="seconds an idle connection is kept open after a response")
    add_option(p, "--follow", type=bounded(float, 0, MAX_TIMEOUT), default=DEFAULT_FOLLOW_INTERVAL,
               metavar="SECONDS",
               help="seconds between checks for a new generation of the collection (written by `hybridhash "
                    "encode` run again onto it), switched to between requests without a restart; "
                    "0: serve the generation opened until restarted")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="the server's log level")


def run(args) -> int:
    from hybridhash.retrieval import Retriever
    from hybridhash.app.serve.app import create_app
    from hybridhash.app.serve.decodes import limit_arenas
    from hybridhash.app.serve.headers import allowed_hosts
    from hybridhash.app.serve.server import bind_socket, is_loopback, run_server, socket_url

    hosts = allowed_hosts(args.host, args.allowed_host)
    # before the server's threads start: they share few malloc arenas (see hybridhash.app.serve.decodes)
    limit_arenas()
    from hybridhash.environment import device_option

    args.device = device_option(args.device)  # a one-line error for an unknown or absent device
    retriever = Retriever.open(args.collection, checkpoint=args.checkpoint, device=args.device, kind=args.kind,
                               runtime=args.runtime, precision=args.precision, max_pixels=args.max_pixels,
                               root=args.image_root)
    app = create_app(retriever, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                     max_k=args.max_k, max_batch=args.max_batch, max_decodes=args.max_decodes,
                     body_timeout=args.body_timeout, max_requests=args.max_requests, allowed_hosts=hosts,
                     follow_interval=args.follow or None)
    sock = bind_socket(args.host, args.port)  # bound before printing, so the URL is the real one
    port = sock.getsockname()[1]
    if args.host in ("0.0.0.0", "::", ""):
        url = f"http://127.0.0.1:{port}/"
        where = f" (listening on all interfaces, port {port})"
    else:
        url, where = socket_url(sock) + "/", ""
    following = f", following its updates every {args.follow:g} s" if args.follow else ""
    print(f"serving {retriever.count} images ({retriever.bits}-bit codes, "
          f"{getattr(retriever.index, 'kind', 'flat')} index) from {printable(retriever.collection.directory)}"
          f" (generation {retriever.generation}{following})")
    print(f"open {url} in a browser{where}; API docs at {url}docs; Ctrl-C stops", flush=True)
    if not is_loopback(args.host):
        print("warning: not bound to loopback: anyone who can reach this address can search the collection "
              f"and download its images; requests are answered for the Host names {', '.join(hosts)} "
              f"(add others with --allowed-host)", flush=True)
    run_server(app, sock, log_level=args.log_level, keep_alive_timeout=args.keep_alive_timeout)
    return 0
