"""Decoding in helper processes, for codecs that crash or fill memory on damaged data.

Found by feeding imagecodecs' decoders damaged segments (docs/operations.md):

* JPEG XR (jxrlib) kills its process with SIGSEGV or SIGFPE (17 inputs in 16,000, some
  from one changed header byte);
* JPEG 2000 (OpenJPEG) fills as much memory as a damaged header claims: a 16 x 16 tile
  whose header says 2^20 x 2^20 pixels took 3.8 GB before failing, and without a limit
  a test process was ended by the kernel's OOM killer.

In the daemon either would take the whole mount down, so segments of these compressions
are decoded by a helper process instead, its address space limited to what the segment
can need. When a helper dies, runs out of that memory or does not answer in time, only
that read fails (``BrokenSource``: EIO and one log line), and the next one starts a new
helper.

Each request passes the open source file itself (``SCM_RIGHTS`` over a socket pair), so
the helper decodes the very version the caller opened, with tifffile as
``tifffs.pixels`` does in process. Answers are a JSON header and raw bytes, checked
against what the page can hold: nothing a helper sends is unpickled or trusted. A helper
ends when its socket closes or its parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from tifffile import COMPRESSION

from tifffs.decoding import decoding_failure, tifffile_decoder
from tifffs.errors import BrokenSource, SourceChanged
from tifffs.page_rules import decode_allowance
from tifffs.pages import SourcePage, SourceVersion
from tifffs.pools import available_cores
from tifffs.spawn import signal_name, start_helper, wait_or_kill

#: Compressions decoded only in a helper process, by the name of their codec.
ISOLATED_COMPRESSIONS: dict[int, str] = {
    COMPRESSION.JPEGXR: "JPEG XR",
    COMPRESSION.JPEGXR_NDPI: "JPEG XR",
    COMPRESSION.JPEG2000: "JPEG 2000",
    COMPRESSION.APERIO_JP2000_YCBC: "JPEG 2000",
    COMPRESSION.JPEG_2000_LOSSY: "JPEG 2000",
    COMPRESSION.APERIO_JP2000_RGB: "JPEG 2000",
}
#: While decoding, a helper's address space may grow by ``page_rules.decode_allowance``
#: of the page's largest segment counted at ``WORK_ITEMSIZE`` bytes a sample: OpenJPEG
#: works on 32-bit samples, and took 7 bytes a sample for a valid single-strip
#: 4096 x 4096 RGB image of 8 bits.
WORK_ITEMSIZE = 4
#: A request (sending the segment, decoding, answering) must end within this time.
DECODE_SECONDS = 60.0
#: Helpers kept waiting for work.
IDLE_HELPERS = 2
#: Helpers running at once (decoding is CPU-bound: one per core, at least two).
MAX_HELPERS = max(2, available_cores())
#: The largest item of a decoded segment (complex128): bounds an answer's size.
MAX_ITEMSIZE = 16
#: Decoders a helper keeps built (one per file version and IFD).
HELPER_DECODERS = 8

_LENGTH = struct.Struct("<I")  # the length of the JSON header that follows
_FD = struct.Struct("i")  # a descriptor in SCM_RIGHTS data
_MAX_HEADER = 1 << 16
def is_isolated(compression: int) -> bool:
    """True when segments of this compression are decoded in a helper process."""
    return compression in ISOLATED_COMPRESSIONS


def isolated_decoder(fd: int, version: SourceVersion, page: SourcePage,
                     name: str) -> Callable[..., Any]:
    """A ``decode(data, index)`` like tifffile's, run in a helper process on the open
    file ``fd``; it returns (segment array or None, None, None)."""
    codec = ISOLATED_COMPRESSIONS[page.compression]
    samples = page.segment_samples
    limit = samples * MAX_ITEMSIZE  # the largest answer (the render casts to the page's type)
    request = {"version": list(version[:4]), "ifd_offset": page.ifd_offset,
               "page": page.index, "name": name, "compression": page.compression,
               "memory": decode_allowance(samples * max(WORK_ITEMSIZE, page.dtype.itemsize))}

    def decode(data: bytes, index: int) -> tuple[np.ndarray | None, None, None]:
        where = f"page {page.index} segment {index}"
        header, payload = _HELPERS.run(fd, dict(request, segment=index), data, limit,
                                       f"{where}: the {codec} decoder")
        return _segment(header, payload, page, where), None, None

    return decode


def _segment(header: dict[str, Any], payload: bytearray, page: SourcePage,
             where: str) -> np.ndarray | None:
    """The decoded segment an answer holds, checked against the page."""
    if header.get("error"):
        kind = SourceChanged if header.get("changed") else BrokenSource
        raise kind(f"{where}: {header['error']}")
    if header.get("empty"):
        return None
    try:
        dtype = np.dtype(header["dtype"])
        shape = tuple(int(n) for n in header["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BrokenSource(f"{where}: the decoding helper answered nonsense ({exc})") from exc
    if (dtype.kind not in "uifcb" or len(shape) != 4 or min(shape) < 0
            or shape[3] != page.samples_per_row_pixel
            or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(payload)):
        raise BrokenSource(f"{where}: the decoding helper answered a segment of {dtype} "
                           f"{shape}, which this page cannot hold")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


class _Channel:
    """Framed messages over a stream socket: a 4-byte length, a JSON header (with the
    payload's ``size``), the payload; a descriptor may ride along with the header.
    Every call ends by ``deadline`` (``time.monotonic``; None: no deadline) or raises
    TimeoutError."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, header: dict[str, Any], payload: bytes | memoryview,
             deadline: float | None, fd: int | None = None) -> None:
        encoded = json.dumps(dict(header, size=len(payload))).encode()
        first = _LENGTH.pack(len(encoded)) + encoded
        if fd is not None:  # the descriptor goes with the first bytes
            while True:
                try:
                    sent = socket.send_fds(self.sock, [first], [fd])
                    break
                except BlockingIOError:
                    self._wait(select.POLLOUT, deadline)
            first = first[sent:]
        self._send_all(first, deadline)
        self._send_all(payload, deadline)

    def receive(self, limit: int | None, deadline: float | None
                ) -> tuple[dict[str, Any], bytearray, list[int]]:
        """(header, payload, descriptors received); a payload of at most ``limit``
        bytes; EOFError when the peer closed, ValueError for a malformed message."""
        fds: list[int] = []
        try:
            start = self._receive_exactly(_LENGTH.size, deadline, fds)
            (length,) = _LENGTH.unpack(start)
            if length > _MAX_HEADER:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(bytes(self._receive_exactly(length, deadline, fds)))
            size = header.get("size") if isinstance(header, dict) else None
            if not isinstance(size, int) or size < 0 or limit is not None and size > limit:
                raise ValueError(f"a payload of {size!r} bytes (at most {limit})")
            return header, self._receive_exactly(size, deadline, fds), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _send_all(self, data: bytes | memoryview, deadline: float | None) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                self._wait(select.POLLOUT, deadline)

    def _receive_exactly(self, size: int, deadline: float | None,
                         fds: list[int]) -> bytearray:
        """``size`` bytes; descriptors that come with them are added to ``fds``."""
        data = bytearray(size)  # writable: a decoded segment is written to later
        view = memoryview(data)
        done = 0
        while done < size:
            try:
                count, ancillary, _, _ = self.sock.recvmsg_into(
                    [view[done:]], socket.CMSG_SPACE(_FD.size))
            except BlockingIOError:
                self._wait(select.POLLIN, deadline)
                continue
            for level, kind, cmsg in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    whole = len(cmsg) - len(cmsg) % _FD.size
                    fds += [fd for (fd,) in _FD.iter_unpack(cmsg[:whole])]
            if not count:
                raise EOFError
            done += count
        return data

    def _wait(self, event: int, deadline: float | None) -> None:
        poller = select.poll()  # not select(): descriptors may be numbered beyond 1024
        poller.register(self.sock, event)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise TimeoutError


class _Helper:
    """One helper process and its socket; used by one request at a time."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = start_helper(
                "tifffs.isolated:serve", str(theirs.fileno()),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # what decoders
                stderr=subprocess.DEVNULL, pass_fds=[theirs.fileno()])  # print: nowhere
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.channel = _Channel(ours)

    def close(self) -> None:
        """Close our end: an idle helper then exits."""
        self.channel.sock.close()

    def stop(self) -> int:
        """End the helper (close, then kill if it has not exited within a second); its
        exit status (negative: the signal that ended it)."""
        self.close()
        return wait_or_kill(self.process, 1.0)


class _Helpers:
    """The helper processes of this process: started when first needed, at most
    ``MAX_HELPERS`` at once (a request waits for a free one), ``IDLE_HELPERS`` kept."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset_in_child)

    def _reset(self) -> None:
        self._idle: list[_Helper] = []
        self._ending: list[_Helper] = []  # closed, not yet reaped
        self._all: set[_Helper] = set()
        self._running = 0  # started and not stopped: idle or busy
        #: the most helpers that ran at once
        self.peak = 0
        self._changed = threading.Condition()

    def _reset_in_child(self) -> None:
        # a forked child must neither keep its parent's helpers alive nor use them
        for helper in self._all:
            with contextlib.suppress(OSError):
                helper.channel.sock.close()
        self._reset()

    def run(self, fd: int, request: dict[str, Any], data: bytes, limit: int,
            what: str) -> tuple[dict[str, Any], bytearray]:
        """The answer (header, payload) to one request; BrokenSource when it failed."""
        for attempt in (1, 2):
            helper = self._take()
            deadline = time.monotonic() + DECODE_SECONDS
            try:
                try:
                    helper.channel.send(request, data, deadline, fd)
                except (BrokenPipeError, ConnectionResetError):
                    if attempt == 1:  # it ended while idle (killed): another one
                        self._stop(helper)
                        continue
                    raise
                header, payload, fds = helper.channel.receive(limit, deadline)
            except TimeoutError:
                helper.process.kill()
                self._stop(helper)
                raise BrokenSource(f"{what} did not finish within {DECODE_SECONDS:g} s; "
                                   "the data may be damaged") from None
            except (OSError, EOFError):  # no answer: the helper ended
                status = self._stop(helper)
                if status < 0:
                    raise BrokenSource(f"{what} crashed ({signal_name(status)}) on damaged "
                                       "data (in a helper process: only this read fails)"
                                       ) from None
                raise BrokenSource(f"{what} (in a helper process) ended without an answer "
                                   f"(exit status {status})") from None
            except (ValueError, RecursionError) as exc:  # an answer, but no sense
                self._stop(helper)
                raise BrokenSource(f"{what} (in a helper process) answered nonsense: "
                                   f"{exc}") from None
            except BaseException:
                self._stop(helper)
                raise
            for extra in fds:  # helpers send none
                os.close(extra)
            self._give_back(helper)
            return header, payload
        raise AssertionError("unreachable")

    def _take(self) -> _Helper:
        with self._changed:
            self._reap()
            while not self._idle and self._running >= MAX_HELPERS:
                self._changed.wait()
                self._reap()
            if self._idle:
                return self._idle.pop()
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            helper = _Helper()
        except OSError as exc:
            self._ended()
            raise BrokenSource(f"cannot start a decoding helper process: {exc}") from exc
        with self._changed:
            self._all.add(helper)
        return helper

    def _reap(self) -> None:
        """Drop idle helpers that died (killed, OOM), reap closed ones that exited."""
        for helper in [h for h in self._idle if h.process.poll() is not None]:
            self._idle.remove(helper)
            helper.close()
            self._forget(helper)
        self._ending = [h for h in self._ending if h.process.poll() is None]

    def _give_back(self, helper: _Helper) -> None:
        with self._changed:
            if len(self._idle) < IDLE_HELPERS:
                self._idle.append(helper)
            else:  # surplus: it exits when closed; reaped later, nobody waits for it
                helper.close()
                self._ending.append(helper)
                self._forget(helper)
            self._changed.notify()

    def _stop(self, helper: _Helper) -> int:
        status = helper.stop()
        with self._changed:
            self._forget(helper)
            self._changed.notify()
        return status

    def _ended(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify()

    def _forget(self, helper: _Helper) -> None:
        # with self._changed held
        self._all.discard(helper)
        self._running -= 1

    def pids(self) -> list[int]:
        """Process ids of the idle helpers."""
        with self._changed:
            return [helper.process.pid for helper in self._idle]

    def stop_all(self) -> None:
        """Stop the idle helpers and reap the closed ones (at exit; busy ones end with
        their sockets)."""
        with self._changed:
            idle, self._idle = self._idle, []
            ending, self._ending = self._ending, []
        for helper in idle:
            self._stop(helper)
        for helper in ending:
            helper.stop()


_HELPERS = _Helpers()
atexit.register(_HELPERS.stop_all)


def helper_pids() -> list[int]:
    """Process ids of this process's idle decoding helpers (for tests and diagnosis)."""
    return _HELPERS.pids()


def most_helpers_at_once() -> int:
    """The most decoding helpers this process ran at once."""
    return _HELPERS.peak


def stop_helpers() -> None:
    """Stop this process's idle decoding helpers now (they also stop at exit)."""
    _HELPERS.stop_all()


# -- the helper's side
def serve(fd: str) -> None:
    """A helper's life: answer the requests that come on socket ``fd`` (its number)
    until it closes or the process that started this one ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    channel = _Channel(socket.socket(fileno=int(fd)))
    decoders: OrderedDict[tuple[Any, ...], Callable[..., Any]] = OrderedDict()
    while True:
        try:
            request, payload, fds = channel.receive(None, None)
        except (EOFError, OSError, ValueError):
            return
        try:
            answer, segment = _answer(request, payload, fds, decoders)
        finally:
            for received in fds:
                os.close(received)
        channel.send(answer, b"" if segment is None else memoryview(segment).cast("B"),
                     None)


def _answer(request: dict[str, Any], payload: bytearray, fds: list[int],
            decoders: OrderedDict[tuple[Any, ...], Callable[..., Any]]
            ) -> tuple[dict[str, Any], Any]:
    """(answer header, contiguous segment or None) for one request."""
    try:
        if len(fds) != 1:
            raise ValueError(f"{len(fds)} descriptors came with the request")
        version = tuple(request["version"])
        if SourceVersion.of(os.fstat(fds[0]))[:4] != version:
            raise SourceChanged("source changed while its view was open; reopen the view")
        key = (version, request["ifd_offset"])
        decode = decoders.get(key)
        if decode is None:
            decode = tifffile_decoder(fds[0], request["ifd_offset"], request["page"],
                                      request["name"])
            decoders[key] = decode
            while len(decoders) > HELPER_DECODERS:
                decoders.popitem(last=False)
        decoders.move_to_end(key)
        with _address_space(request["memory"]):
            segment = decode(payload, request["segment"])[0]
    except SourceChanged as exc:
        return {"error": str(exc), "changed": True}, None
    except MemoryError as exc:
        return {"error": "cannot decode: the decoder wanted more memory than a segment of "
                f"this page needs ({exc or 'out of memory'}); the data is damaged"}, None
    except Exception as exc:  # noqa: BLE001  (the decoder's own error, reported)
        return {"error": decoding_failure(request["compression"], exc)}, None
    if segment is None:
        return {"empty": True}, None
    segment = np.ascontiguousarray(segment)
    return {"dtype": segment.dtype.str, "shape": list(segment.shape)}, segment


@contextlib.contextmanager
def _address_space(extra: int) -> Iterator[None]:
    """Let this process's address space grow by at most ``extra`` bytes meanwhile: an
    allocation beyond fails (MemoryError, or the decoder's own error), where without a
    limit it would be filled until the OOM killer ends a process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    limit = size + extra
    for bound in (soft, hard):
        if bound != resource.RLIM_INFINITY:
            limit = min(limit, bound)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _end_with(parent: int) -> None:
    """End this helper once the process that started it has ended (even mid-decode:
    the decoders release the GIL)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
