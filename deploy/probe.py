"""Probing local servers: a free loopback port to start one on, and waiting until a starting one answers."""

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from rankstream.deploy.errors import StackError

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could bind `port` on loopback now."""
    with socket.socket() as sock:
        # Both servers set SO_REUSEADDR, so TIME_WAIT leftovers of a previous run do not block them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers(port: int) -> bool:
    """Whether something accepts connections on `port` on loopback."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def wait_ready(
    probe: Callable[[], T],
    not_yet: tuple[type[BaseException], ...],
    *,
    alive: Callable[[], bool],
    timeout: float,
    interval: float,
    exited: str,
    late: str,
) -> T:
    """Call `probe` until it returns; StackError(`exited`) if the server dies, StackError(`late`) after `timeout`.

    `not_yet` are the exceptions that mean "still starting". Messages say where to look.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return probe()
        except not_yet as exc:
            if not alive():
                raise StackError(exited) from exc
            if time.monotonic() > deadline:
                raise StackError(late) from exc
            time.sleep(interval)
