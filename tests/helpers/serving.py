"""``hybridhash serve`` as a child process on a free loopback port, started as a person starts it:
its URL read from what it prints, waited for until ``/health`` answers, stopped with Ctrl-C.
Used by the service tests and by the service benchmarks."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Tuple

import httpx


def start_serve(options: Sequence, log: Path, env: Optional[Mapping[str, str]] = None
                ) -> Tuple[subprocess.Popen, queue.Queue]:
    """``python -m hybridhash.app.cli serve OPTIONS`` started in a child process; (process, its stdout lines).

    The child's stderr is appended to ``log`` and its environment is ``env`` (this one's when None).
    The queue gets each line the command prints, then "" twice at the end of its output, so that
    a wait for a line, or for the next one, fails at once.
    """
    with open(log, "a") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hybridhash.app.cli", "serve", *(str(o) for o in options)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put("")
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


@contextmanager
def serve_process(options: Sequence, log: Path, env: Optional[Mapping[str, str]] = None,
                  start_timeout: float = 300.0, health_timeout: float = 120.0) -> Iterator[Tuple[int, str]]:
    """``hybridhash serve OPTIONS`` in a child process (:func:`start_serve`); yields (pid, URL).

    The URL is the one the command prints (``open http://...``); it must be a loopback one, and it
    answers ``/health`` before this yields. Raises RuntimeError when the command stops before
    printing its URL (with the log's tail). On leaving, the child gets SIGINT (Ctrl-C), and is killed
    when it has not ended 30 s later.
    """
    proc, lines = start_serve(options, log, env)
    try:
        url = None
        while url is None:
            line = lines.get(timeout=start_timeout)
            if not line:
                raise RuntimeError(f"hybridhash serve stopped: {Path(log).read_text()[-2000:]}")
            if line.startswith("open http"):
                url = line.split()[1].rstrip("/")
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"not a loopback URL: {url}")
        deadline = time.monotonic() + health_timeout
        while True:
            try:
                httpx.get(url + "/health", timeout=5).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield proc.pid, url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
