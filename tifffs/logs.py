"""Where the daemon's log goes, and how other libraries' log lines reach it.

A mount never fails because of its log: ``--log-file`` if given, else syslog when
``/dev/log`` exists (in the background), else the first writable of
``$XDG_STATE_HOME/tifffs/tifffs.log`` (``~/.local/state/...``),
``$XDG_RUNTIME_DIR/tifffs.log`` and ``/tmp/tifffs-<uid>.log``; else nothing is logged.
tifffile's and fusepy's own lines are passed on as tifffs debug lines: tifffs reports
each problem itself, once, naming the file.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import tempfile

log = logging.getLogger("tifffs")
FORMAT = "%(asctime)s tifffs[%(process)d] %(levelname)s %(message)s"
THIRD_PARTY = ("tifffile", "fuse", "mfusepy")


def log_file_candidates() -> list[str]:
    """Log files to try, in order, when neither ``--log-file`` nor syslog is used."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    candidates = [os.path.join(state, "tifffs", "tifffs.log")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(os.path.join(runtime, "tifffs.log"))
    candidates.append(os.path.join(tempfile.gettempdir(), f"tifffs-{os.getuid()}.log"))
    return candidates


def open_handler(log_file: str | None,
                 background: bool) -> tuple[logging.Handler, str, str | None]:
    """The handler of the daemon's log, where it writes (in words), and a problem met
    on the way (to be logged once the handler is in place)."""
    if log_file:
        try:
            return logging.FileHandler(log_file), log_file, None
        except OSError as exc:
            handler, where, _ = open_handler(None, background)
            return handler, where, (f"cannot write the log file {log_file} "
                                    f"({exc.strerror}): logging to {where} instead")
    handler, where = _default_handler(background)
    return handler, where, None


def _default_handler(background: bool) -> tuple[logging.Handler, str]:
    if not background:
        return logging.StreamHandler(), "standard error"
    if os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.ident = "tifffs: "
            return handler, "syslog (journalctl -t tifffs)"
        except OSError:
            pass
    for candidate in log_file_candidates():
        try:
            os.makedirs(os.path.dirname(candidate), mode=0o700, exist_ok=True)
            return _private_file_handler(candidate), candidate
        except OSError:
            continue
    return logging.NullHandler(), "nowhere (no writable place: give --log-file FILE)"


def _private_file_handler(path: str) -> logging.Handler:
    """A handler appending to ``path``, created 0600, never through a symlink (the
    candidates include a shared temporary folder)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    os.close(fd)
    return logging.FileHandler(path)


def describe_destination(log_file: str | None, background: bool) -> str:
    """Where ``open_handler`` would log, without opening anything."""
    if log_file:
        return log_file
    if not background:
        return "standard error"
    if os.path.exists("/dev/log"):
        return "syslog (journalctl -t tifffs)"
    for candidate in log_file_candidates():
        folder = os.path.dirname(candidate)
        if os.access(folder if os.path.isdir(folder) else os.path.dirname(folder), os.W_OK):
            return candidate
    return "nowhere (no writable place: give --log-file FILE)"


def setup(log_file: str | None, background: bool, debug: bool) -> str:
    """Configure the root logger for the daemon; returns where the log goes."""
    handler, where, problem = open_handler(log_file, background)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    route_third_party()
    if problem:
        log.warning("%s", problem)
    return where


def setup_command(prefix: str) -> None:
    """Log for a command run on a terminal (``tifffs index``): tifffs's warnings and
    errors on standard error as ``<prefix>: <message>``, like the command's own lines;
    other libraries' lines as for the daemon (debug lines, so not shown)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    route_third_party()


class _AsDebug(logging.Handler):
    """Passes another library's record on as a tifffs debug line."""

    def emit(self, record: logging.LogRecord) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s", record.name, record.getMessage())


def route_third_party() -> None:
    """tifffile's and fusepy's log lines become tifffs debug lines (and reach no other
    handler: tifffs logs each problem once itself, naming the file)."""
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.handlers = [_AsDebug()]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
