"""The etcd the demo's controllers hold their authority in (``powerplane demo --controllers 2``).

A private, one-member etcd on a free loopback port in a temporary directory, with a short
heartbeat: etcd's smallest lease TTL is 1.5 election ticks, so with 10 ms heartbeats a
controller can hold a 1 s lease — the demo runs ten times faster than the wall clock, and
etcd leases are whole seconds of wall time. A site runs three members (deploy/).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from models.errors import PowerplaneError
from powerplane.broker import free_port
from powerplane.proc import dies_with_parent


class PrivateEtcd:
    """A running private etcd."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], tmp: tempfile.TemporaryDirectory[str]) -> None:
        self.port, self._proc, self._tmp = port, proc, tmp

    @property
    def url(self) -> str:
        """``etcd://127.0.0.1:port``, as ``powerplane controller --authority`` takes it."""
        return f"etcd://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop it and remove its data."""
        self._proc.terminate()
        try:
            await asyncio.to_thread(self._proc.wait, 10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._tmp.cleanup()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def start_etcd(timeout_s: float = 20.0) -> PrivateEtcd:
    """Start a private etcd (``etcd-server``; scripts/setup installs it)."""
    exe = shutil.which("etcd") or shutil.which("etcd", path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        raise PowerplaneError("--controllers 2 needs etcd for the controllers' authority: install etcd-server "
                              "(scripts/setup does)")
    port, peer = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory(prefix="powerplane-etcd-")
    peer_url, client_url = f"http://127.0.0.1:{peer}", f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(dies_with_parent([
        exe, "--name", "demo", "--data-dir", str(Path(tmp.name) / "data"), "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls",
        peer_url, "--initial-cluster", f"demo={peer_url}", "--heartbeat-interval", "10", "--election-timeout", "100",
        "--logger", "zap", "--log-level", "error"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    etcd = PrivateEtcd(port, proc, tmp)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        if proc.poll() is not None:
            break
        if await asyncio.to_thread(_healthy, port):
            return etcd
        await asyncio.sleep(0.1)
    await etcd.stop()
    raise PowerplaneError(f"etcd did not start on port {port}")
