"""systemd's notify protocol (READY=1, WATCHDOG=1, STATUS=...) without a dependency.

With ``Type=notify`` and ``WatchdogSec=`` in a unit, systemd sets ``$NOTIFY_SOCKET`` and kills
(and restarts) a service that stops sending ``WATCHDOG=1``: the control loop sends it after
every period it completes, so a stalled loop is noticed from outside the process.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing where it is unset."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._sock is not None

    def notify(self, state: str) -> None:
        """Send ``state`` (e.g. ``READY=1``); a lost notification is not an error."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.sendto(state.encode(), self._addr)

    def ready(self, status: str = "") -> None:
        """Tell the manager the service is up."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Pet the watchdog."""
        self.notify("WATCHDOG=1")
