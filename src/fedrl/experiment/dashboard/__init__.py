"""The live dashboard: one self-contained web page (``page.html``, no external assets) that polls
``api/status`` every second and draws the return curve, round times, accepted and rejected updates
and a table of clients. ``fedrl server`` serves it on its metrics port (``/``); ``fedrl run
--dashboard HOST:PORT`` serves it for a simulation. Each side supplies ``status()``: a JSON-ready
dict with the keys ``page.html`` reads (``name``, ``kind``, ``deployed_version``, ``round``,
``rounds``, ``finished``, ``updates``, ``now``, ``stale_s``, ``series``, ``curve``, ``columns``,
``clients``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from wsgiref.simple_server import make_server

from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler  # as the server's metrics use

Status = Callable[[], dict]
WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


@cache
def page() -> bytes:
    """The dashboard's HTML."""
    return resources.files(__package__).joinpath("page.html").read_bytes()


def dashboard_app(status: Status, fallback: WSGIApp | None = None) -> WSGIApp:
    """A WSGI app answering ``/`` with the page and ``/api/status`` with ``status()`` as JSON;
    other paths go to ``fallback`` (404 without one)."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path in ("/", "/dashboard"):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")])
            return [page()]
        if path == "/api/status":
            body = json.dumps(status(), allow_nan=False).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [body]
        if fallback is not None:
            return fallback(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


class Dashboard:
    """A dashboard served from a daemon thread; ``url`` to open, ``close()`` to stop."""

    def __init__(self, status: Status, host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = make_server(host, port, dashboard_app(status), ThreadingWSGIServer, handler_class=_SilentHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fedrl-dashboard", daemon=True)
        self._thread.start()
        self.url = f"http://{host}:{self._httpd.server_address[1]}/"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def finite_or_none(value: float | None) -> float | None:
    """``value``, or None for a missing or non-finite one (JSON has no NaN)."""
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else float(value)
