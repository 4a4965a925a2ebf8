"""Running ``tifffs render`` on an existing dask.distributed cluster (``--scheduler``).

tifffs starts no scheduler or worker of its own: it submits one task per file (or per
range of a large file) to the scheduler it is given. Workers read SOURCE and write
OUTPUT at the same paths as this machine, so both must be on a shared filesystem.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from tifffs.config import ConfigError

CONNECT_TIMEOUT = "10s"


class ClusterError(Exception):
    """The cluster cannot be used; the message says what to do."""


class DaskPool:
    """Tasks submitted to a dask.distributed scheduler."""

    def __init__(self, address: str) -> None:
        try:
            import distributed
        except ImportError:
            raise ConfigError("--scheduler needs dask.distributed: install it with "
                              "pip install 'tifffs[dask]'") from None
        self._distributed = distributed
        # the client logs its own view of connection problems: we report them once
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        _check_reachable(address)
        try:
            self._client = distributed.Client(address, timeout=CONNECT_TIMEOUT,
                                              set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach the dask scheduler at {address} ({exc}): "
                               "check --scheduler, or start one with: dask scheduler") from None
        threads = sum(self._client.nthreads().values())
        self.window = max(4, 2 * threads)
        self._completed = distributed.as_completed(loop=self._client.loop)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._client.submit(fn, *args, pure=False)
        self._completed.add(future)
        return future

    def wait_any(self, futures: list[Any]) -> Iterable[Any]:
        # every submitted future is in ``futures`` until it is returned here once
        return [next(self._completed), *self._completed.next_batch(block=False)]

    def shutdown(self, cancel: list[Any]) -> None:
        try:
            if cancel:
                # a task already running goes on; it renames only a complete output
                self._client.cancel(cancel)
        finally:
            self._client.close()


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens at a ``tcp://`` address (the client would retry
    until its timeout); other schemes are left to the client."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"invalid --scheduler {address!r}: use tcp://HOST:PORT, e.g. "
                          "tcp://sched:8786") from None
    if parts.scheme != "tcp" or not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the dask scheduler at {address} ({exc}): check "
                           "--scheduler, or start one with: dask scheduler") from None
