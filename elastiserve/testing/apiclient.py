"""A minimal HTTPS client for the harness's own calls to the API server.

The harness needs a handful of requests (readiness, creating nodes, checking them) before any
test runs. Doing them with the standard library keeps the harness importable and fast to
start without the ``kubernetes`` package, and keeps its errors in our own words.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any

from elastiserve.testing.certs import Pki


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    """Admin requests to one API server on loopback, authenticated by client certificate."""

    def __init__(self, host: str, port: int, pki: Pki, timeout_s: float = 5.0) -> None:
        self._host = host
        self._port = port
        self._timeout_s = timeout_s
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self._context = context

    def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send one request; connection errors propagate as ``OSError``."""
        conn = http.client.HTTPSConnection(
            self._host, self._port, context=self._context, timeout=self._timeout_s
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            reply = conn.getresponse()
            return Response(status=reply.status, body=reply.read())
        finally:
            conn.close()

    def ok(self, path: str) -> bool:
        """True if GET ``path`` answers 200; false while the server is not up yet."""
        try:
            return self.request("GET", path).status == 200
        except OSError:
            return False


def http_ok(url_host: str, port: int, path: str, *, tls: bool, timeout_s: float = 2.0) -> bool:
    """True if a component's health endpoint answers 200 (self-signed TLS is accepted)."""
    conn: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(url_host, port, context=context, timeout=timeout_s)
    else:
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
