"""Real servers for the tests and benchmarks: started on free loopback ports in temporary directories.

No protocol or server that can run here is mocked. Each class starts the real binary
(mosquitto, influxd 1.x, victoria-metrics, snmpd, snmpsimd), waits until it answers, and
stops it; ``stop()``/``start()`` on the same port lets tests drill outages and restarts.

When a binary is missing the test is skipped locally, but with ``CI=true`` it fails: CI
must never pass by skipping what it was meant to test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from powerplane.proc import dies_with_parent

SBIN = "/usr/sbin:/usr/local/sbin:/sbin"


def require(binary: str) -> str:
    """Path of ``binary``; skip the test if missing, or fail it under CI=true."""
    path = shutil.which(binary) or shutil.which(binary, path=SBIN)
    if path:
        return path
    msg = f"{binary} not found on PATH (scripts/setup installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {msg}", pytrace=False)
    pytest.skip(msg)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, timeout_s: float = 15.0) -> bool:
    """Wait until 127.0.0.1:port accepts TCP connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def wait_http(url: str, ok: tuple[int, ...] = (200, 204), timeout_s: float = 30.0) -> bool:
    """Wait until ``url`` answers with one of ``ok``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status in ok:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


class Server:
    """A subprocess server with a fixed port across restarts."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        """The command line (after ``prepare``)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration files before the first start."""

    def ready(self) -> bool:
        """Block until the server answers; False on timeout."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment of the server process."""
        return dict(os.environ)

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.prepare()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(dies_with_parent(self.command()), stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env(), start_new_session=True)
        if not self.ready():
            tail = self.log.read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL for a crash drill)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None


class Mosquitto(Server):
    """mosquitto 2.x; ``persistent`` keeps sessions and queued QoS 1 messages across restarts."""

    name = "mosquitto"

    def __init__(self, workdir: Path, persistent: bool = True, users: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.exe = require("mosquitto")
        self.port = free_port()
        self.persistent = persistent
        self.users = users  # name -> password: no anonymous client, a password file (mosquitto_passwd)

    def prepare(self) -> None:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        auth = ["allow_anonymous true"]
        if self.users is not None:
            pw = self.workdir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([require("mosquitto_passwd"), "-b", str(pw), user, password], check=True,
                               capture_output=True)
            pw.chmod(0o600)
            auth = ["allow_anonymous false", f"password_file {pw}"]
        lines = [f"listener {self.port} 127.0.0.1", *auth,
                 # A slow QoS 1 subscriber must not lose messages to the default 1000 cap.
                 "max_queued_messages 1000000", "max_inflight_messages 0",
                 f"persistence {'true' if self.persistent else 'false'}",
                 f"persistence_location {data}/", "autosave_interval 1", "log_dest stderr",
                 "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", who cannot enter pytest's
            # 0700 temp root: persistence then fails with "Permission denied" on every save.
            lines.append("user root")
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.exe, "-c", str(self.workdir / "mosquitto.conf")]

    def ready(self) -> bool:
        return wait_tcp(self.port)

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:port``."""
        return f"mqtt://127.0.0.1:{self.port}"


class InfluxDB1(Server):
    """InfluxDB 1.x (Debian's ``influxdb``): v1 ``/write`` and InfluxQL ``/query``; no /api/v2."""

    name = "influxd"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = require("influxd")
        self.port = free_port()
        self.rpc_port = free_port()

    def prepare(self) -> None:
        w = self.workdir
        conf = f"""
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{w}/meta"
[data]
  dir = "{w}/data"
  wal-dir = "{w}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[continuous_queries]
  enabled = false
"""
        (w / "influxdb.conf").write_text(conf)

    def command(self) -> list[str]:
        return [self.exe, "-config", str(self.workdir / "influxdb.conf")]

    def ready(self) -> bool:
        return wait_http(f"{self.url}/ping")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.port}"


class VictoriaMetrics(Server):
    """VictoriaMetrics single node: accepts influxdb-client's ``/api/v2/write``; ``/api/v1/export``."""

    name = "victoria-metrics"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = require("victoria-metrics")
        self.port = free_port()

    def command(self) -> list[str]:
        return [self.exe, f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y",
                "-search.latencyOffset=0s", "-loggerLevel=ERROR"]

    def ready(self) -> bool:
        return wait_http(f"{self.url}/health")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.port}"

    def flush(self) -> None:
        """Make recent writes searchable now (VictoriaMetrics buffers them ~1 s)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Every raw sample held for ``match`` (after a flush), one dict per series (``/api/v1/export``)."""
        self.flush()
        q = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=30) as r:
            return [json.loads(ln) for ln in r.read().decode().splitlines() if ln.strip()]


class Snmpd(Server):
    """net-snmp snmpd with a v2c community and a v3 authPriv user, numeric OIDs only."""

    name = "snmpd"
    community = "public"
    v3_user = "ppuser"
    v3_auth = "ppauthpass1"
    v3_priv = "ppprivpass1"

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        super().__init__(workdir)
        self.exe = require("snmpd")
        self.port = free_port(socket.SOCK_DGRAM)
        self.extra_conf = extra_conf

    def prepare(self) -> None:
        w = self.workdir
        # The listening address goes on the command line only: combining it with an
        # agentAddress line in the file makes snmpd bind twice and fail.
        conf = [f"rocommunity {self.community} 127.0.0.1",
                f"createUser {self.v3_user} SHA {self.v3_auth} AES {self.v3_priv}",
                f"rouser {self.v3_user} priv",
                "sysLocation powerplane-test", "sysContact tests@powerplane", self.extra_conf]
        (w / "snmpd.conf").write_text("\n".join(conf) + "\n")
        (w / "persist").mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        e = dict(os.environ)
        e["MIBS"] = ""  # Debian ships no MIB files; numeric OIDs only
        e["SNMP_PERSISTENT_DIR"] = str(self.workdir / "persist")
        return e

    def command(self) -> list[str]:
        return [self.exe, "-f", "-Lo", "-C", "-c", str(self.workdir / "snmpd.conf"),
                "-p", str(self.workdir / "snmpd.pid"), f"udp:127.0.0.1:{self.port}"]

    def ready(self) -> bool:
        snmpget = require("snmpget")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = subprocess.run([snmpget, "-v2c", "-c", self.community, "-t", "0.3", "-r", "0",
                                f"127.0.0.1:{self.port}", ".1.3.6.1.2.1.1.1.0"],
                               capture_output=True, text=True, env=self.env())
            if r.returncode == 0:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False


class Snmpsim(Server):
    """snmpsim serving ``*.snmprec`` files from ``data_dir``: community = file name.

    snmpsimd refuses to run as root and drops to ``nobody``, who cannot enter pytest's
    0700 temp root; so it gets its own world-readable directory with a copy of the data.
    """

    name = "snmpsimd"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="powerplane-snmpsim-")))
        self.exe = require("snmpsimd")
        self.port = free_port(socket.SOCK_DGRAM)
        self.data_dir = self.workdir / "data"
        shutil.copytree(data_dir, self.data_dir, dirs_exist_ok=True)

    def prepare(self) -> None:
        cache = self.workdir / "cache"
        cache.mkdir(exist_ok=True)
        os.chmod(self.workdir, 0o755)
        for p in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if os.geteuid() == 0:
            shutil.chown(cache, "nobody", "nogroup")

    def command(self) -> list[str]:
        cmd = [self.exe, f"--data-dir={self.data_dir}", f"--cache-dir={self.workdir / 'cache'}",
               f"--agent-udpv4-endpoint=127.0.0.1:{self.port}", "--logging-method=stderr"]
        if os.geteuid() == 0:
            cmd += ["--process-user=nobody", "--process-group=nogroup"]
        return cmd

    def ready(self) -> bool:
        snmpget = require("snmpget")
        community = next((p.stem for p in self.data_dir.glob("*.snmprec")), "public")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run([snmpget, "-v2c", "-c", community, "-t", "0.3", "-r", "0",
                                f"127.0.0.1:{self.port}", ".1.3.6.1.2.1.1.1.0"],
                               capture_output=True, text=True, env={**os.environ, "MIBS": ""})
            if r.returncode == 0 and "No Such" not in r.stdout:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def cleanup(self) -> None:
        """Remove the private directory (after ``stop``)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


DEPLOY_MOSQUITTO = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"


class ShippedMosquitto(Server):
    """mosquitto running a shipped configuration (``deploy/mosquitto/mosquitto.conf``), as a site would.

    Only what cannot be shipped is changed: the listeners move to free loopback ports (the
    authenticated 1883 to ``port``, the demo-only anonymous 1884 to ``twin_port``) and the files
    to ``workdir``. ``acl`` is the authenticated listener's ACL text; ``users`` maps accounts to
    passwords, hashed with ``mosquitto_passwd -U`` as ``deploy/compose-init.sh`` does.
    """

    name = "mosquitto-shipped"

    def __init__(self, workdir: Path, acl: str, users: dict[str, str], *, conf: Path | None = None,
                 twin_acl: Path | None = None, passwd: Path | None = None) -> None:
        super().__init__(workdir)
        self.exe = require("mosquitto")
        self.passwd_exe = require("mosquitto_passwd")
        self.port = free_port()
        self.twin_port = free_port()
        self.acl = acl
        self.users = dict(users)
        self.conf = conf or DEPLOY_MOSQUITTO / "mosquitto.conf"
        self.twin_acl = twin_acl or DEPLOY_MOSQUITTO / "acl.twin"
        self.passwd = passwd  # an already hashed password file (compose-init.sh's) instead of ``users``

    def prepare(self) -> None:
        w = self.workdir
        (w / "data").mkdir(exist_ok=True)
        (w / "acl").write_text(self.acl)
        shutil.copyfile(self.twin_acl, w / "acl.twin")
        passwd = w / "passwd"
        if self.passwd is not None:
            shutil.copyfile(self.passwd, passwd)
        else:
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            subprocess.run([self.passwd_exe, "-U", str(passwd)], check=True, capture_output=True)
        passwd.chmod(0o600)
        ports = {"1883": self.port, "1884": self.twin_port}
        out = []
        for ln in self.conf.read_text().splitlines():
            key, _, val = ln.partition(" ")
            if key == "listener":
                port = val.split()[0]
                if port not in ports:
                    raise ValueError(f"{self.conf}: unexpected listener {val!r}")
                ln = f"listener {ports[port]} 127.0.0.1"
            elif key in ("password_file", "acl_file"):
                ln = f"{key} {w / Path(val).name}"
            elif key == "persistence_location":
                ln = f"{key} {w / 'data'}/"
            out.append(ln)
        if os.geteuid() == 0:
            out.append("user root")  # as the Mosquitto fixture: pytest's 0700 temp root stays enterable
        (w / "mosquitto.conf").write_text("\n".join(out) + "\n")

    def command(self) -> list[str]:
        return [self.exe, "-c", str(self.workdir / "mosquitto.conf")]

    def ready(self) -> bool:
        return wait_tcp(self.port) and wait_tcp(self.twin_port)

    def url(self, user: str | None = None) -> str:
        """``mqtt://[user@]127.0.0.1:port`` of the authenticated listener (never a password)."""
        return f"mqtt://{user + '@' if user else ''}127.0.0.1:{self.port}"

    @property
    def twin_url(self) -> str:
        """``mqtt://127.0.0.1:twin_port``: the demo-only anonymous listener."""
        return f"mqtt://127.0.0.1:{self.twin_port}"


class Etcd(Server):
    """etcd 3.4 (Debian's ``etcd-server``), one member on loopback, with its v3 HTTP gateway.

    A short heartbeat lowers etcd's smallest lease TTL (1.5 election ticks) below one second,
    so tests and the demo can hold authority with a 1-2 s lease.
    """

    name = "etcd"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = require("etcd")
        self.port = free_port()
        self.peer_port = free_port()

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [self.exe, "--name", "pp", "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"pp={peer}", "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn"]

    def ready(self) -> bool:
        return wait_http(f"{self.url}/health")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``: the client URL (gRPC and the v3 HTTP gateway)."""
        return f"http://127.0.0.1:{self.port}"
