"""Running the app on uvicorn: in the foreground (the ``serve`` command) or on a background thread
(tests, benchmarks). The socket is bound here, so port 0 picks a free port and the URL printed or
returned is the real one.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Optional

import uvicorn

from ...errors import ConfigError
from ...limits import KEEP_ALIVE_TIMEOUT

# seconds an idle keep-alive connection stays open after its last response (uvicorn's own default)
DEFAULT_KEEP_ALIVE_TIMEOUT = KEEP_ALIVE_TIMEOUT


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port). ConfigError if it cannot bind."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: cannot resolve ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror})") from None
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(app, sock: socket.socket, log_level: str = "info",
               keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT) -> None:
    """Serve ``app`` on the bound ``sock`` until Ctrl-C (or SIGTERM); returns after a clean shutdown.

    ``keep_alive_timeout``: seconds an idle connection is kept after a response (a stalled request
    body is the app's to time out, see :class:`~hybridhash.app.serve.app.BodyLimitMiddleware`).
    """
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info"),
                            timeout_graceful_shutdown=5, timeout_keep_alive=keep_alive_timeout)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after shutting down cleanly
        pass


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``.

    Runs uvicorn on a thread on a free loopback port; leaving the block stops it and waits for it.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT):
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.keep_alive_timeout = keep_alive_timeout
        self.url: Optional[str] = None
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._sock = bind_socket(self.host, self.port)
        self.url = socket_url(self._sock)
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False,
                                timeout_graceful_shutdown=5, timeout_keep_alive=self.keep_alive_timeout)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread stopped during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
