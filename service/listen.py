"""The HTTP listening socket, bound before anything else starts.

Binding first means a taken port is one clear line and exit status 1 before any
migration or thread has started (uvicorn would log a traceback-free error only
after the whole start-up, then shut everything down again), and port 0 gives the
real port to print.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["PortInUse", "bind_listening_socket"]


class PortInUse(Exception):
    """The address is taken: the message names it and the `option` that changes it."""

    def __init__(self, host: str, port: int, option: str) -> None:
        super().__init__(
            f"port {port} on {host} is in use (another process listens there): "
            f"stop it, or choose another port with {option}"
        )


def bind_listening_socket(host: str, port: int, option: str) -> socket.socket:
    """A socket bound to (host, port), for uvicorn to listen on; raises PortInUse
    naming `option` (e.g. "PORT" or "--port") when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Like uvicorn: a restart does not wait for the old connections' TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, option) from None
        raise
    sock.set_inheritable(True)
    return sock
