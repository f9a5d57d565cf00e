"""What the long-running commands share: the run loop, the clock, the broker address, logging off the loop."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import logging.handlers
import os
import queue
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bus.mqtt import PASSWORD_ENV, MqttAddress
from models.clock import NS_PER_S, Clock, ScaledClock, SystemClock
from models.errors import ConfigError


def add_mqtt_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--mqtt URL`` and ``--mqtt-password-file FILE``."""
    p.add_argument("--mqtt", required=required, metavar="URL",
                   help=f"broker, mqtt://[user@]host:port (mqtts:// for TLS); the password comes from "
                        f"--mqtt-password-file or ${PASSWORD_ENV}, never the URL")
    p.add_argument("--mqtt-password-file", default=None, metavar="FILE", help="the MQTT user's password")


def mqtt_address(args: argparse.Namespace, default_user: str | None = None) -> MqttAddress:
    """The broker of ``--mqtt`` with its password from the file or the environment (``default_user``:
    the user name when the URL names none)."""
    return MqttAddress.parse(args.mqtt, password_file=args.mqtt_password_file, default_user=default_user)


def clock_from(anchor: str | None) -> Clock:
    """The system clock, or the demo's shared scaled clock (``--clock``)."""
    if anchor is None:
        return SystemClock()
    try:
        return ScaledClock.from_anchor(anchor)
    except ValueError as exc:
        raise ConfigError("--clock", [("", str(exc))]) from None


def logging_off_the_loop() -> None:
    """Route every log record through a queue to a thread: a slow terminal or disk never stalls the loop."""
    root = logging.getLogger()
    if any(isinstance(h, logging.handlers.QueueHandler) for h in root.handlers):
        return
    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    handlers = list(root.handlers)
    for h in handlers:
        root.removeHandler(h)

    class Dropping(logging.handlers.QueueHandler):
        def enqueue(self, record: logging.LogRecord) -> None:
            with contextlib.suppress(queue.Full):  # a log flood is dropped, not waited for
                self.queue.put_nowait(record)

    root.addHandler(Dropping(q))
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)


async def run_until(duration_s: float | None, clock: Clock, tick: Callable[[], Any] | None = None,
                    every_s: float = 10.0, stop: asyncio.Event | None = None) -> str:
    """Wait for SIGINT/SIGTERM, ``stop`` or ``duration_s`` of (site) time, calling ``tick`` every
    ``every_s`` of wall time; return why it ended (``signal``, ``duration`` or ``stopped``)."""
    ev = stop or asyncio.Event()
    got_signal = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _both, got_signal, ev)
    end = None if duration_s is None else clock.now_ns() + int(duration_s * NS_PER_S)
    while not ev.is_set() and (end is None or clock.now_ns() < end):
        left = every_s if end is None else min(every_s, (end - clock.now_ns()) / NS_PER_S / clock.speed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), max(0.01, left))
        if tick is not None:
            tick()
    return "signal" if got_signal.is_set() else "stopped" if ev.is_set() else "duration"


def _both(a: asyncio.Event, b: asyncio.Event) -> None:
    a.set()
    b.set()


def read_epoch(state_dir: Path) -> int:
    """The authority epoch last persisted in ``state_dir`` (0 if none)."""
    p = state_dir / "epoch"
    try:
        return int(p.read_text().strip()) if p.exists() else 0
    except (OSError, ValueError) as exc:
        raise ConfigError(str(p), [("", f"unreadable epoch file ({exc}); an operator must check it: agents "
                                        "refuse commands from an older epoch")]) from None


def next_epoch(state_dir: Path) -> int:
    """Read, raise and persist (fsync) this controller's authority epoch: commands of a restarted
    controller always order after the old one's, whatever the clock did."""
    new = read_epoch(state_dir) + 1
    write_epoch(state_dir, new)
    return new


def write_epoch(state_dir: Path, new: int) -> None:
    """Persist (fsync) ``new`` as this controller's authority epoch."""
    p = state_dir / "epoch"
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{new}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)

