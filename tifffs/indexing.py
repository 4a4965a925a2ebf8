"""``tifffs index SOURCE``: build or refresh the metadata index ahead of a mount."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tifffs import ahead, logs
from tifffs.config import (
    DEFAULT_METHOD,
    MountConfig,
    check_source,
    parse_factors,
    parse_method,
    parse_views,
)
from tifffs.errors import TifffsError
from tifffs.index import default_directory
from tifffs.pages import SourceVersion
from tifffs.pools import available_cores
from tifffs.problems import printable
from tifffs.views import is_tiff_name

if TYPE_CHECKING:
    from tifffs.tree import ViewTree


def index_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tifffs index",
        description="Describe every TIFF under SOURCE into the metadata index, with the "
                    "sizes of its views, so that a later mount lists them at once. Safe "
                    "to run while mounts use the index.")
    parser.add_argument("source", metavar="SOURCE", help="directory of TIFF files")
    parser.add_argument("--index-dir", help="folder of the index (default "
                        f"{default_directory()})")
    parser.add_argument("--factors", help="the factors the mount will show (default 2,4,8)")
    parser.add_argument("--views", help="named views the mount will show, e.g. x4-max,fit1000")
    parser.add_argument("--method", help=f"default method (default {DEFAULT_METHOD})")
    return parser


def index_command(argv: list[str]) -> int:
    """Run ``tifffs index``; returns the exit status (1 when a file failed)."""
    args = index_parser().parse_args(argv)
    method = parse_method(args.method if args.method is not None else DEFAULT_METHOD)
    source = os.path.abspath(args.source)
    check_source(source)
    views = MountConfig(source, "",
                        parse_factors(args.factors) if args.factors is not None else None,
                        parse_views(args.views, method) if args.views is not None else (),
                        method).views
    from tifffs.setup import build_tree

    logs.setup_command("tifffs index")  # a broken IFD chain, an unusable index...

    tree = build_tree(source, views, 32 << 20, args.index_dir or "")
    index = tree.catalog.index
    if index is None:
        return 1  # open_index has said why
    return _index_files(tree, list(_tiffs(source)), index.path)


def _tiffs(root: str) -> Iterator[str]:
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            if is_tiff_name(name):
                yield os.path.join(folder, name)


def _index_files(tree: ViewTree, files: list[str], index_path: str) -> int:
    catalog = tree.catalog
    started = time.monotonic()
    pages = failures = 0
    helper = _FromTheEnd()
    try:
        helper.start(tree, files, index_path)
        for path in _progress(files):
            if path in helper.pages:
                pages += helper.pages[path]
                continue
            helper.mine.add(path)
            try:
                st = os.stat(path)
                for view in tree.views.values():
                    catalog.size(path, st, view)
                pages += len(catalog.description(path, SourceVersion.of(st)).pages)
            except (TifffsError, OSError) as exc:
                failures += 1
                print(f"tifffs index: {printable(path)}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("tifffs index: interrupted; the index keeps what was described so far",
              file=sys.stderr)
        return 130
    finally:
        helper.stop()
        catalog.index.flush()
    print(f"tifffs index: {len(files)} files, {pages} pages, {failures} failures in "
          f"{time.monotonic() - started:.1f} s; index {index_path}", file=sys.stderr)
    return 1 if failures else 0


class _FromTheEnd:
    """A helper process describing ``files`` from the last one back while this process
    goes from the first on (when there are many and a core to spare): the two meet in
    the middle. ``pages`` holds what the helper described, ``mine`` what this process
    took on itself."""

    def __init__(self) -> None:
        self.pages: dict[str, int] = {}
        self.mine: set[str] = set()
        self._helper: ahead.Helper | None = None

    def start(self, tree: ViewTree, files: list[str], index_path: str) -> None:
        if len(files) >= ahead.MIN_FILES and available_cores() > 1:
            self._helper = ahead.Helper(tree.root, os.path.dirname(index_path),
                                        tuple(tree.views.values()), self._received,
                                        paths=files[::-1])
            self._helper.start()

    def _received(self, path: str, version: SourceVersion, sizes: list[int],
                  pages: int) -> bool:
        if path in self.mine:
            return False
        self.pages[path] = pages
        return True

    def stop(self) -> None:
        if self._helper is not None:
            self._helper.stop()


def _progress(files: list[str]) -> Iterable[str]:
    if not sys.stderr.isatty():
        return files
    from tqdm import tqdm

    return tqdm(files, unit="file", desc="tifffs index", file=sys.stderr)
