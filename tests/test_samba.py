"""Samba re-exports a mount: Debian's smbd, with a configuration of its own bound to
127.0.0.1 on a free port, shares a real tifffs mount (``-o allow_other``, so that smbd's
guest user may enter it); smbclient fetches the views, which equal ``tifffs render``."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import mounted, sample_array, wait_for, write_stack
from robustness import require, world_readable_workdir
from tools import free_port, stop_group
from trees import render, tree_files

pytestmark = pytest.mark.mount
START_TIMEOUT = 60.0
SMB_CONF = """\
[global]
  server role = standalone server
  interfaces = 127.0.0.1
  bind interfaces only = yes
  smb ports = {port}
  disable netbios = yes
  server min protocol = SMB2
  map to guest = Bad User
  guest account = nobody
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  private dir = {run}/private
  lock directory = {run}/lock
  state directory = {run}/state
  cache directory = {run}/cache
  pid directory = {run}/pid
  ncalrpc dir = {run}/ncalrpc
  binddns dir = {run}/binddns
  passdb backend = tdbsam:{run}/private/passdb.tdb
  log file = {run}/log.%m

[views]
  path = {path}
  read only = yes
  guest ok = yes
  guest only = yes
"""


def _listening(port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def smbd(share: Path, workdir: Path) -> Iterator[int]:
    """smbd sharing ``share`` as ``views`` for guests; yields its port, stops it after."""
    run = workdir / "samba"
    for name in ("private", "lock", "state", "cache", "pid", "ncalrpc", "binddns"):
        (run / name).mkdir(parents=True)
    port = free_port()
    conf = run / "smb.conf"
    conf.write_text(SMB_CONF.format(port=port, run=run, path=share))
    log = run / "smbd.log"
    process = subprocess.Popen([require("smbd"), "--foreground", "--no-process-group",
                                "--debug-stdout", "-s", str(conf)],
                               stdin=subprocess.DEVNULL, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _listening(port), START_TIMEOUT, "smbd", process, log)
        yield port
    finally:
        stop_group(process)  # smbd and the children it forked


def smbclient(port: int, commands: str) -> subprocess.CompletedProcess:
    """Run ``commands`` on the share as a guest."""
    return subprocess.run([require("smbclient"), "//127.0.0.1/views", "-p", str(port), "-N",
                           "-c", commands], capture_output=True, text=True, timeout=120,
                           check=False)


def test_samba_share_of_a_mount_serves_the_rendered_bytes(tmp_path):
    source = tmp_path / "src"
    write_stack(source / "stack.tif", sample_array("uint16", (4, 300, 260)))
    write_stack(source / "run 1" / "cells.tif", sample_array("uint8", (3, 90, 70), seed=1),
                compression="zlib")
    write_stack(source / "run 1" / "rgb.TIFF", sample_array("uint8", (50, 40, 3), seed=2),
                photometric="rgb")
    (source / "run 1" / "notes.txt").write_text("acquisition notes\n")
    work = world_readable_workdir("tifffs-samba-")
    try:
        with mounted(source, work / "m", "-o", "allow_other", "--views", "x4,x2-max") as mount, \
                smbd(mount.path, work) as port:
            for view, options in [("x4", ["--factor", "4"]), ("x2-max", ["--view", "x2-max"])]:
                rendered = tmp_path / f"rendered-{view}"
                render(source, rendered, *options)
                fetched = tmp_path / f"fetched-{view}"
                fetched.mkdir()
                result = smbclient(port, f'prompt OFF; recurse ON; cd {view}; '
                                         f'lcd "{fetched}"; mget *')
                assert result.returncode == 0, result.stdout + result.stderr
                assert tree_files(fetched) == tree_files(rendered)
                assert len(tree_files(fetched)) == 4
    finally:
        shutil.rmtree(work, ignore_errors=True)
