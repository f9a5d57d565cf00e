"""The MQTT broker the demo and the twin use.

Order of preference: an operator's broker (``--mqtt mqtt://host:port``); otherwise a private
mosquitto started on a free loopback port when ``mosquitto`` is on PATH (the set-up script
installs it); otherwise amqtt, a pure-Python broker embedded in the process (MQTT 3.1.1
only and a few thousand messages/s — plenty for one demo site, not for production).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bus.mqtt import MqttAddress, MqttLink
from models.errors import PowerplaneError
from powerplane.proc import dies_with_parent


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout_s: float = 10.0) -> bool:
    """Wait until a TCP port accepts connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def mosquitto_config(port: int, host: str = "127.0.0.1", data_dir: str | None = None) -> str:
    """A mosquitto 2.x configuration for a private, anonymous loopback broker."""
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        # QoS 1 messages to a slow subscriber are dropped beyond this queue (default 1000).
        "max_queued_messages 1000000",
        "max_inflight_messages 0",
        "persistence " + ("true" if data_dir else "false"),
        "log_dest stderr",
        "log_type error",
    ]
    if data_dir:
        lines.append(f"persistence_location {data_dir.rstrip('/')}/")
    return "\n".join(lines) + "\n"


class Broker:
    """A running (or external) MQTT broker."""

    def __init__(self, kind: str, host: str, port: int, addr: MqttAddress | None = None) -> None:
        self.kind = kind  # external | mosquitto | amqtt
        self.host = host
        self.port = port
        # The address clients use, credentials and TLS included (an external broker's, as given).
        self.addr = addr if addr is not None else MqttAddress(host, port)
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._amqtt: Any = None

    @property
    def url(self) -> str:
        """``mqtt[s]://[user@]host:port`` (never the password)."""
        return self.addr.url()

    def describe(self) -> str:
        """One line for the operator."""
        return {"external": "external broker", "mosquitto": "private mosquitto",
                "amqtt": "embedded amqtt (pure Python)"}[self.kind] + f" at {self.url}"

    async def stop(self) -> None:
        """Stop a broker we started (an external one is left alone)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, 5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._amqtt is not None:
            await self._amqtt.shutdown()
            self._amqtt = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


async def start_broker(url: str | None = None, prefer: str = "auto", *,
                       password_file: str | None = None) -> Broker:
    """Use ``url`` if given (password from ``password_file`` or the environment), else start
    mosquitto if found, else an embedded amqtt."""
    if url:
        addr = MqttAddress.parse(url, password_file=password_file)
        await check_broker(addr)
        return Broker("external", addr.host, addr.port, addr)
    exe = shutil.which("mosquitto") or (shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin"))
    if exe and prefer in ("auto", "mosquitto"):
        return await _start_mosquitto(exe)
    return await _start_amqtt()


async def check_broker(addr: MqttAddress, timeout_s: float = 10.0) -> None:
    """Connect once to an operator's broker before anything starts: a refused account (wrong
    password, unknown user) or no broker at all is one clear error now, not every process of
    the plane retrying for minutes."""
    link = MqttLink(addr, client_id=f"powerplane-check-{os.getpid()}")
    link.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if link.connected.is_set():
                return
            if link.refused is not None:
                raise PowerplaneError(
                    f"the MQTT broker {addr.url()} refused the connection: {link.refused} (check the user "
                    "in the URL and --mqtt-password-file or $POWERPLANE_MQTT_PASSWORD)")
            await asyncio.sleep(0.05)
        raise PowerplaneError(f"no MQTT broker answered at {addr.url()} within {timeout_s:g} s")
    finally:
        link.stop()


async def _start_mosquitto(exe: str) -> Broker:
    port = free_port()
    b = Broker("mosquitto", "127.0.0.1", port)
    b._tmp = tempfile.TemporaryDirectory(prefix="powerplane-mqtt-")
    conf = Path(b._tmp.name) / "mosquitto.conf"
    conf.write_text(mosquitto_config(port))
    b._proc = subprocess.Popen(dies_with_parent([exe, "-c", str(conf)]), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    if not await asyncio.to_thread(wait_port, "127.0.0.1", port, 10.0):
        err = b._proc.stderr.read().decode(errors="replace") if b._proc.poll() is not None and b._proc.stderr else ""
        await b.stop()
        raise PowerplaneError(f"mosquitto did not start on port {port}: {err.strip()}")
    return b


async def _start_amqtt() -> Broker:
    try:
        from amqtt.broker import Broker as AmqttBroker
    except ImportError:
        raise PowerplaneError(
            "no MQTT broker: install mosquitto (scripts/setup does), pass --mqtt URL, "
            "or pip install 'powerplane[broker]' for the embedded amqtt") from None
    port = free_port()
    b = Broker("amqtt", "127.0.0.1", port)
    cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
           "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    b._amqtt = AmqttBroker(cfg)
    await b._amqtt.start()
    return b
