"""Command line: ``tifffs SOURCE MOUNTPOINT [options]`` and ``tifffs render``.

The mount forks to the background while no library thread exists: numpy, tifffile and
the modules that use them are imported only in the daemon, after the fork. Only the FUSE
binding (fusepy) is imported before, by ``check_mount_preconditions``, so that a missing
libfuse is reported on the terminal; it loads libfuse with ctypes and starts no thread.
The fork and the wait for the daemon are in ``tifffs.background``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable

from tifffs import __version__
from tifffs.background import serve_in_background
from tifffs.config import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_FACTORS,
    DEFAULT_METHOD,
    MOUNT_SETTINGS,
    ConfigError,
    MountConfig,
    cache_size_at_least_a_band,
    check_source,
    parse_factors,
    parse_libfuse,
    parse_method,
    parse_render_threads,
    parse_size,
    parse_views,
    split_mount_options,
)
from tifffs.methods import METHODS
from tifffs.startlock import release_inherited, start_lock

log = logging.getLogger("tifffs")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tifffs`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["render"]:
            from tifffs import rendering

            return rendering.main(argv[1:])
        if argv[:1] == ["index"]:
            from tifffs.indexing import index_command

            return index_command(argv[1:])
        return _mount(_config(_mount_parser().parse_args(argv)))
    except ConfigError as exc:
        print(f"tifffs: error: {exc}", file=sys.stderr)
        return 2


# -- mount
def _mount_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tifffs",
        description="Mount downsampled, uncompressed views of the TIFF files under SOURCE "
                    "at MOUNTPOINT/x<factor>/<same path>. Unmount with: fusermount -u "
                    "MOUNTPOINT. To write one view to a file: tifffs render --help; to "
                    "build the metadata index ahead of a mount: tifffs index --help.")
    parser.add_argument("source", metavar="SOURCE", help="directory of TIFF files")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="empty directory to mount on")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground; SIGINT/SIGTERM unmount")
    parser.add_argument("--factors", help=f"reduction factors, one directory each "
                        f"(default {','.join(map(str, DEFAULT_FACTORS))} unless --views is "
                        "given)")
    parser.add_argument("--views", help="view directories by name, e.g. x4,x4-max,x4z2,fit1000 "
                        "(alone: only these; with --factors: added to its views)")
    parser.add_argument("--method", help=f"default method: {', '.join(METHODS)} "
                        f"(default {DEFAULT_METHOD})")
    parser.add_argument("--use-levels", action="store_true",
                        help="start from a pyramid level of the source when one is exactly "
                             "k times smaller, k dividing the factor")
    parser.add_argument("--imagej-large", action="store_true",
                        help="write views over 4 GiB in ImageJ's format (one IFD, contiguous "
                             "pages) instead of BigTIFF, for ImageJ 1.x")
    parser.add_argument("--cache-size", help="memory for rendered pixel bands "
                        f"(default {DEFAULT_CACHE_BYTES >> 20}M)")
    parser.add_argument("--log-file", help="append log lines to this file")
    parser.add_argument("--index-dir", help="folder of the metadata index (default "
                        "$XDG_CACHE_HOME/tifffs, else ~/.cache/tifffs)")
    parser.add_argument("--no-index", action="store_true",
                        help="keep no index on disk (metadata is kept in memory only)")
    parser.add_argument("--libfuse", choices=("2", "3"),
                        help="libfuse to mount with: 2 (fusepy, the default) or 3 (mfusepy: "
                             "listings carry attributes, so ls -l of a large folder is "
                             "several times faster; reads of up to 1 MiB)")
    parser.add_argument("--render-threads", metavar="N",
                        help="bands rendered at once (default: one per core this process "
                             "may run on)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]",
                        help=f"mount options: {', '.join(MOUNT_SETTINGS)} (the options "
                             "above; lists separated by ':', e.g. factors=2:4:8), plus libfuse "
                             "options such as allow_other")
    parser.add_argument("-v", "--debug", action="store_true",
                        help="verbose log, with a trace of every request (operation, path, "
                             "offset and size, result, duration)")
    parser.add_argument("--version", action="version", version=f"tifffs {__version__}")
    return parser


def _config(args: argparse.Namespace) -> MountConfig:
    ours, fuse_options = split_mount_options(args.options)

    def setting(name: str, default: str | None = None) -> str | None:
        """The option's value, else its ``-o`` form's, else ``default``. An empty value
        is kept, to be refused: it never stands for the default."""
        value = getattr(args, name)
        value = ours.get(name) if value is None else value
        return default if value is None else value

    factors = setting("factors")
    views = setting("views")
    method = parse_method(setting("method", DEFAULT_METHOD))
    cache_size = setting("cache_size")
    cache_bytes, message = cache_size_at_least_a_band(
        parse_size(cache_size) if cache_size is not None else DEFAULT_CACHE_BYTES)
    if message:
        print(f"tifffs: {message}", file=sys.stderr)
    return MountConfig(
        source=os.path.abspath(args.source),
        mountpoint=os.path.abspath(args.mountpoint),
        factors=parse_factors(factors) if factors is not None else None,
        view_names=parse_views(views, method) if views is not None else (),
        method=method,
        use_levels=args.use_levels or "use_levels" in ours,
        imagej_large=args.imagej_large or "imagej_large" in ours,
        cache_bytes=cache_bytes,
        index_dir=_absolute(_not_empty(setting("index_dir"), "--index-dir")),
        no_index=args.no_index or "no_index" in ours,
        libfuse=parse_libfuse(setting("libfuse", "2")),
        render_threads=_render_threads(setting("render_threads")),
        foreground=args.foreground or "foreground" in ours,
        debug=args.debug or "debug" in ours,
        log_file=_absolute(_not_empty(setting("log_file"), "--log-file")),
        fuse_options=fuse_options,
    )


def _render_threads(text: str | None) -> int | None:
    return None if text is None else parse_render_threads(text)


def _not_empty(path: str | None, option: str) -> str | None:
    """``path``, refused when given empty (it would silently mean the default)."""
    if path is not None and not path.strip():
        raise ConfigError(f"{option} is empty: give a path, or leave the option out for "
                          "the default")
    return path


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute now: the daemon changes its folder to / (before logging,
    and before its helpers start)."""
    return os.path.abspath(path) if path else None


def check_mount_preconditions(config: MountConfig) -> None:
    """Raise ``ConfigError`` saying what to do when the mount cannot work."""
    check_source(config.source)
    mountpoint = config.mountpoint
    if _is_stale_mount(mountpoint) and not _clear_stale_tifffs_mount(mountpoint):
        raise ConfigError(f"MOUNTPOINT {mountpoint} is a stale mount (its daemon died): "
                          f"clear it with fusermount -u {mountpoint}")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise ConfigError(f"MOUNTPOINT {mountpoint} does not exist: create it with "
                          f"mkdir -p {mountpoint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"MOUNTPOINT {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"MOUNTPOINT {mountpoint} is already mounted: unmount it with "
                          f"fusermount -u {mountpoint}, or choose another directory")
    if os.listdir(mountpoint) and "nonempty" not in config.fuse_options:
        raise ConfigError(f"MOUNTPOINT {mountpoint} is not empty: use an empty directory")
    if os.path.realpath(mountpoint).startswith(os.path.realpath(config.source) + os.sep):
        raise ConfigError("MOUNTPOINT lies inside SOURCE: choose a directory outside it")
    if not os.path.exists("/dev/fuse"):
        raise ConfigError("/dev/fuse is missing: load the fuse module (modprobe fuse) or, in "
                          "a container, run it with --device /dev/fuse --cap-add SYS_ADMIN")
    try:
        import fuse  # noqa: F401  (fusepy finds libfuse when imported)
    except (OSError, ImportError) as exc:
        raise ConfigError(f"libfuse 2 is not usable ({exc}): install it, on Debian/Ubuntu "
                          "with: sudo apt install libfuse2 fuse3") from None
    if config.libfuse == 3:
        try:
            from tifffs.fs3 import check_usable
            check_usable()
        except (OSError, ImportError) as exc:
            raise ConfigError(f"libfuse 3 is not usable ({exc}): install it, on Debian/Ubuntu "
                              "with: sudo apt install fuse3 libfuse3-3, or mount with "
                              "--libfuse 2") from None


def _is_stale_mount(mountpoint: str) -> bool:
    """True for a mount whose FUSE daemon is gone ("transport endpoint is not connected")."""
    try:
        os.listdir(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _clear_stale_tifffs_mount(mountpoint: str) -> bool:
    """Unmount a tifffs mount whose daemon has died; True if it is gone now.

    Safe: "transport endpoint is not connected" means no process serves it any more.
    """
    if _mount_type(mountpoint) != "fuse.tifffs":
        return False
    for command in (["fusermount", "-u"], ["fusermount3", "-u"], ["fusermount", "-uz"],
                    ["fusermount3", "-uz"], ["umount", "-l"]):
        try:
            subprocess.run([*command, mountpoint], capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        print(f"tifffs: cleared a stale tifffs mount at {mountpoint} (its daemon had died)",
              file=sys.stderr)
        return True
    return False


def _mount_type(mountpoint: str) -> str | None:
    """The filesystem type mounted at ``mountpoint``, from /proc/self/mounts."""
    try:
        with open("/proc/self/mounts") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):  # the last mount on a point is the visible one
        fields = line.split()
        if len(fields) > 2 and _unescape_mount_field(fields[1]) == mountpoint:
            return fields[2]
    return None


def _unescape_mount_field(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount(config: MountConfig) -> int:
    if config.foreground:
        with contextlib.ExitStack() as held:
            held.enter_context(start_lock(config.mountpoint))
            check_mount_preconditions(config)
            _setup_logging(config, background=False)
            notify = _notify_systemd if os.environ.get("NOTIFY_SOCKET") else None

            def ready() -> None:
                held.close()  # mounted: the next start may look, and find it mounted
                if notify is not None:
                    notify()

            return _serve(config, on_ready=ready)
    with start_lock(config.mountpoint):
        check_mount_preconditions(config)
        return serve_in_background(config, _start_daemon, _log_destination(config))


def _start_daemon(config: MountConfig, on_ready: Callable[[], None]) -> int:
    """The daemon, after the fork: log where a daemon logs, then serve."""
    release_inherited()
    _setup_logging(config, background=True)
    return _serve(config, on_ready=on_ready)


def _notify_systemd() -> None:
    """Tell systemd (a ``Type=notify`` unit) that the mount is usable: ``READY=1``."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(b"READY=1\nSTATUS=serving")
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address, exc)


def _serve(config: MountConfig, on_ready: Callable[[], None] | None) -> int:
    from tifffs.fs import TifffsOperations
    from tifffs.setup import build_tree, limit_malloc_arenas, raise_descriptor_limit

    raise_descriptor_limit()
    limit_malloc_arenas()
    tree = build_tree(config.source, config.views, config.cache_bytes,
                      None if config.no_index else config.index_dir or "",
                      config.render_threads, describe_ahead=True)
    operations = TifffsOperations(tree, on_ready=on_ready)
    index = tree.catalog.index
    log.info("mounting %s on %s (views %s, method %s, cache %d MiB, index %s, libfuse %d)",
             config.source, config.mountpoint, ",".join(v.name for v in config.views),
             config.method, config.cache_bytes >> 20, index.path if index else "none",
             config.libfuse)
    # libfuse handles SIGINT/SIGTERM only if they are at their default
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if config.libfuse == 3:
            from tifffs.fs3 import mount
        else:
            from tifffs.fs import mount
        mount(operations, config.mountpoint, dict(config.fuse_options))
    except RuntimeError as exc:
        log.error("mount failed: %s", exc)
        return 1
    log.info("unmounted %s", config.mountpoint)
    return 0


def _setup_logging(config: MountConfig, background: bool) -> None:
    from tifffs import logs

    logs.setup(config.log_file, background, config.debug)


def _log_destination(config: MountConfig) -> str:
    """Where the daemon's log goes, in words."""
    from tifffs import logs

    return logs.describe_destination(config.log_file, background=True)
