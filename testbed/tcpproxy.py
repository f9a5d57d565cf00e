"""A TCP proxy on loopback that a test can cut: a network partition between one client and a real server.

``cut()`` closes every relayed connection and refuses new ones (the client sees resets and
refused connections, as across a partition that a router reports); ``heal()`` accepts again.
Only the clients that connect through the proxy are partitioned; everyone else reaches the
server directly.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttableProxy:
    """Relays 127.0.0.1:``port`` to 127.0.0.1:``upstream_port`` until cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._cut = False
        self._closed = False
        self.accepted = 0
        self.refused = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    self.refused += 1
                    _reset(client)
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                except OSError:
                    _reset(client)
                    continue
                self.accepted += 1
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Partition: reset every relayed connection and refuse new ones."""
        with self._lock:
            self._cut = True
            conns, self._conns = self._conns, []
        for s in conns:
            _reset(s)

    def heal(self) -> None:
        """Relay again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop listening and drop everything."""
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    with contextlib.suppress(OSError):
        s.close()
