"""Loopback ports: pick free ones, and refuse clearly when an asked-for one is taken.

Free ports are found by binding port 0 and closing the socket again. Another program could
take the port in between; that shows up as a component that exits at start, whose log tail
then says "address already in use", so the race is reported rather than hidden.
"""

from __future__ import annotations

import errno
import socket

from elastiserve.testing.errors import PortInUseError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_free(port: int, purpose: str) -> None:
    """Raise ``PortInUseError`` naming the port and its purpose if it cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go servers set SO_REUSEADDR, so connections in TIME_WAIT do not stop them binding;
        # only a live listener does, and only a live listener should be reported here.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUseError(
                    f"port {port} on {LOOPBACK} ({purpose}) is already in use: "
                    "stop whatever listens there or leave the port unset to get a free one"
                ) from exc
            raise
