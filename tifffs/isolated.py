"""Decoding in helper processes, for codecs that crash or allocate without bound on
damaged data.

Found by feeding imagecodecs' decoders damaged segments (docs/operations.md):

* JPEG XR (jxrlib) kills its process with SIGSEGV or SIGFPE (17 inputs in 16,000, some
  from one changed header byte);
* JPEG 2000 (OpenJPEG) fills as much memory as a damaged header claims: a 16 x 16 tile
  whose header says 2^20 x 2^20 pixels took 3.8 GB before failing, and without a limit
  a test process was ended by the kernel's OOM killer.

In the daemon either would take the whole mount down, so segments of these compressions
are decoded by a helper process (``python -m tifffs.isolated``) instead, its address
space limited to what the segment can need. When a helper dies, runs out of that memory
or stops answering, only that read fails (``BrokenSource``: EIO and one log line), and
the next one starts a new helper.

The helper opens the very file the caller has open (``/proc/<pid>/fd/<fd>``), checks
that it is the version described, and decodes with tifffile, as ``tifffs.pixels`` does in
process. Answers are a JSON header and raw bytes, checked against what the page can
hold: nothing a helper sends is unpickled or trusted.

A helper ends when its pipe closes, so helpers never outlive the process that started
them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
from tifffile import COMPRESSION

from tifffs.errors import BrokenSource, SourceChanged
from tifffs.pages import SourcePage, SourceVersion
from tifffs.pools import available_cores

#: Compressions decoded only in a helper process, by the name of their codec.
ISOLATED_COMPRESSIONS: dict[int, str] = {
    COMPRESSION.JPEGXR: "JPEG XR",
    COMPRESSION.JPEGXR_NDPI: "JPEG XR",
    COMPRESSION.JPEG2000: "JPEG 2000",
    COMPRESSION.APERIO_JP2000_YCBC: "JPEG 2000",
    COMPRESSION.JPEG_2000_LOSSY: "JPEG 2000",
    COMPRESSION.APERIO_JP2000_RGB: "JPEG 2000",
}
#: A helper may grow its address space by this many times the largest decoded segment
#: of the page (tifffile's reshaping and casts copy it), plus ``MEMORY_SLACK``.
MEMORY_FACTOR = 4
MEMORY_SLACK = 64 << 20
#: A helper that has not answered one segment in this time is stopped.
DECODE_SECONDS = 60.0
#: Helpers kept waiting for work.
IDLE_HELPERS = 2
#: Helpers running at once (decoding is CPU-bound: one per core, at least two).
MAX_HELPERS = max(2, available_cores())
#: The largest item a decoded segment may have (complex128).
MAX_ITEMSIZE = 16
#: Decoders the helper keeps built (one per file version and IFD).
HELPER_DECODERS = 8

_HEADER = struct.Struct("<I")  # the length of the JSON header that follows


def is_isolated(compression: int) -> bool:
    """True when segments of this compression are decoded in a helper process."""
    return compression in ISOLATED_COMPRESSIONS


def isolated_decoder(fd: int, version: SourceVersion, page: SourcePage,
                     name: str) -> Callable[..., Any]:
    """A ``decode(data, index)`` like tifffile's, run in a helper process; it returns
    (segment array or None, None, None)."""
    codec = ISOLATED_COMPRESSIONS[page.compression]
    # the most bytes a decoded segment of this page may take (of any item size: the
    # render casts to the page's type)
    limit = (page.segment_rows * page.segment_width * page.samples_per_row_pixel
             * MAX_ITEMSIZE)
    request = {"file": f"/proc/{os.getpid()}/fd/{fd}", "version": list(version[:4]),
               "ifd_offset": page.ifd_offset, "page": page.index, "name": name,
               "memory": MEMORY_FACTOR * limit + MEMORY_SLACK}

    def decode(data: bytes, index: int) -> tuple[np.ndarray | None, None, None]:
        header = _HELPERS.run(dict(request, segment=index), data, limit, codec,
                              page.index, index)
        return _segment(header, page, limit, index), None, None

    return decode


def _segment(header: dict[str, Any], page: SourcePage, limit: int,
             index: int) -> np.ndarray | None:
    if header.get("error"):
        kind = SourceChanged if header.get("changed") else BrokenSource
        raise kind(f"page {page.index} segment {index}: {header['error']}")
    if header.get("empty"):
        return None
    try:
        dtype = np.dtype(header["dtype"])
        shape = tuple(int(n) for n in header["shape"])
        payload = header["payload"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BrokenSource(f"page {page.index} segment {index}: the decoding helper "
                           f"answered nonsense ({exc})") from exc
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if (dtype.kind not in "uifcb" or len(shape) != 4 or min(shape) < 0
            or expected != len(payload) or expected > limit):
        raise BrokenSource(f"page {page.index} segment {index}: the decoding helper "
                           f"answered a segment of {dtype} {shape}, which this page "
                           "cannot hold")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


class _Helper:
    """One helper process and its pipes; used by one request at a time."""

    def __init__(self) -> None:
        # the helper imports the same tifffs as this process, installed or not
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=package_root + (os.pathsep + path if path else ""))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tifffs.isolated"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True, env=env,
            start_new_session=True)  # Ctrl-C on a terminal reaches the daemon only

    def ask(self, request: dict[str, Any], data: bytes, limit: int) -> dict[str, Any]:
        """Send one segment, return the answer's header (with its ``payload`` of at
        most ``limit`` bytes)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        _send(self.process.stdin, request, data)
        ready, _, _ = select.select([self.process.stdout], [], [], DECODE_SECONDS)
        if not ready:
            raise TimeoutError
        return _receive(self.process.stdout, limit)

    def stop(self) -> int:
        """End the helper: close its pipes, on which an idle helper exits; kill it if it
        does not within a second. Its exit status (negative: the signal that ended it)."""
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            return self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class _Helpers:
    """The helper processes of this process: started when first needed, at most
    ``MAX_HELPERS`` at once (a request waits for a free one), ``IDLE_HELPERS`` kept."""

    def __init__(self) -> None:
        self._idle: list[_Helper] = []
        self._running = 0  # started and not stopped: idle or busy
        #: the most helpers that ran at once
        self.peak = 0
        self._changed = threading.Condition()
        self._pid = os.getpid()

    def run(self, request: dict[str, Any], data: bytes, limit: int, codec: str,
            page: int, segment: int) -> dict[str, Any]:
        """The helper's answer to one request; BrokenSource when it failed."""
        where = f"page {page} segment {segment}: the {codec} decoder"
        helper = self._take()
        try:
            header = helper.ask(request, data, limit)
        except TimeoutError:
            helper.process.kill()
            self._stop(helper)
            raise BrokenSource(f"{where} did not finish within {DECODE_SECONDS:g} s; the "
                               "data may be damaged") from None
        except (ValueError, TypeError, struct.error) as exc:  # an answer, but no sense
            self._stop(helper)
            raise BrokenSource(f"{where} (in a helper process) answered nonsense: "
                               f"{exc}") from None
        except (OSError, EOFError):  # no answer: the helper ended
            status = self._stop(helper)
            if status < 0:
                raise BrokenSource(f"{where} crashed ({_describe(status)}) on damaged data "
                                   "(in a helper process: only this read fails)") from None
            raise BrokenSource(f"{where} (in a helper process) ended without an answer "
                               f"(exit status {status})") from None
        self._give_back(helper)
        return header

    def _take(self) -> _Helper:
        with self._changed:
            if self._pid != os.getpid():  # forked: the parent's helpers are not ours
                self._idle, self._running, self._pid = [], 0, os.getpid()
            while not self._idle and self._running >= MAX_HELPERS:
                self._changed.wait()
            if self._idle:
                return self._idle.pop()
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            return _Helper()
        except OSError as exc:
            self._ended()
            raise BrokenSource(f"cannot start a decoding helper process: {exc}") from exc

    def _give_back(self, helper: _Helper) -> None:
        with self._changed:
            if len(self._idle) < IDLE_HELPERS and self._pid == os.getpid():
                self._idle.append(helper)
                self._changed.notify()
                return
        self._stop(helper)

    def _stop(self, helper: _Helper) -> int:
        status = helper.stop()
        self._ended()
        return status

    def _ended(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify()

    def pids(self) -> list[int]:
        """Process ids of the idle helpers."""
        with self._changed:
            return [helper.process.pid for helper in self._idle]

    def stop_all(self) -> None:
        """Stop every idle helper (at exit; busy ones end with their pipes)."""
        with self._changed:
            idle, self._idle = self._idle, []
        for helper in idle:
            self._stop(helper)


def _describe(status: int) -> str:
    """The name of the signal that ended a process (``status`` is negative)."""
    with contextlib.suppress(ValueError):
        return signal.Signals(-status).name
    return f"signal {-status}"


_HELPERS = _Helpers()
atexit.register(_HELPERS.stop_all)


def helper_pids() -> list[int]:
    """Process ids of this process's idle decoding helpers (for tests and diagnosis)."""
    return _HELPERS.pids()


def most_helpers_at_once() -> int:
    """The most decoding helpers this process ran at once."""
    return _HELPERS.peak


# -- the wire: a 4-byte length, a JSON header, then ``header["size"]`` raw bytes
def _send(pipe: BinaryIO, header: dict[str, Any], payload: bytes | memoryview) -> None:
    encoded = json.dumps(dict(header, size=len(payload))).encode()
    pipe.write(_HEADER.pack(len(encoded)) + encoded)
    pipe.write(payload)
    pipe.flush()


def _receive(pipe: BinaryIO, limit: int | None = None) -> dict[str, Any]:
    (length,) = _HEADER.unpack(_read_exactly(pipe, _HEADER.size))
    if length > 1 << 16:
        raise ValueError("header too long")
    header = json.loads(bytes(_read_exactly(pipe, length)))
    if not isinstance(header, dict) or not isinstance(header.get("size"), int):
        raise TypeError("the header is no object with a size")
    if header["size"] < 0 or limit is not None and header["size"] > limit:
        raise ValueError(f"a segment of {header['size']} bytes, more than the page holds")
    header["payload"] = _read_exactly(pipe, header["size"])
    return header


def _read_exactly(pipe: BinaryIO, size: int) -> bytearray:
    """``size`` bytes, in a writable buffer (a decoded segment is written to later, as
    tifffile's own are); EOFError if the pipe ends first."""
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        count = pipe.readinto(view[done:])
        if not count:
            raise EOFError
        done += count
    return data


# -- the helper's side
def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until the pipe closes."""
    from tifffs.pixels import tifffile_decoder  # the same decoder as in process (pixels
    # imports this module)

    decoders: OrderedDict[tuple[Any, ...], Callable[..., Any]] = OrderedDict()
    while True:
        try:
            request = _receive(requests)
        except (EOFError, ValueError, TypeError, struct.error):
            return
        try:
            key = (tuple(request["version"]), request["ifd_offset"])
            decode = decoders.get(key)
            if decode is None:
                decode = _open_decoder(request, tifffile_decoder)
                decoders[key] = decode
                while len(decoders) > HELPER_DECODERS:
                    decoders.popitem(last=False)
            decoders.move_to_end(key)
            with _address_space(request["memory"]):
                segment = decode(request["payload"], request["segment"])[0]
        except SourceChanged as exc:
            _send(answers, {"error": str(exc), "changed": True}, b"")
            continue
        except MemoryError as exc:
            _send(answers, {"error": "cannot decode: the decoder wanted more memory than "
                            f"a segment of this page needs ({exc or 'out of memory'}); "
                            "the data is damaged"}, b"")
            continue
        except Exception as exc:  # noqa: BLE001  (the decoder's own error, reported)
            _send(answers, {"error": f"cannot decode: {exc}"}, b"")
            continue
        if segment is None:
            _send(answers, {"empty": True}, b"")
            continue
        segment = np.ascontiguousarray(segment)
        _send(answers, {"dtype": segment.dtype.str, "shape": list(segment.shape)},
              memoryview(segment).cast("B"))


@contextlib.contextmanager
def _address_space(extra: int) -> Iterator[None]:
    """Let this process's address space grow by at most ``extra`` bytes meanwhile: an
    allocation beyond fails (MemoryError, or the decoder's own error), where without a
    limit an overcommitted one would be filled until the OOM killer ends a process."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    soft = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _open_decoder(request: dict[str, Any],
                  tifffile_decoder: Callable[..., Any]) -> Callable[..., Any]:
    fd = os.open(request["file"], os.O_RDONLY)
    try:
        if not SourceVersion.of(os.fstat(fd))[:4] == tuple(request["version"]):
            raise SourceChanged("source changed while its view was open; reopen the view")
        return tifffile_decoder(fd, request["ifd_offset"], request["page"], request["name"])
    finally:
        os.close(fd)


def main() -> None:
    """Entry point of a helper: requests on stdin, answers on the original stdout;
    what the decoders print goes to /dev/null."""
    answers = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
