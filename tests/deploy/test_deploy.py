"""The deploy files work as shipped: they parse, agree with each other and with the CLI, and run.

No Docker or Kubernetes here: compose, the Dockerfile, systemd units and manifests are
checked by parsing and cross-referencing, and every command they run is parsed by
powerplane's own argument parser. What can run here runs for real: the compose demo's
first-start script (deploy/compose-init.sh) generates its secrets into temporary
directories, and mosquitto runs the shipped configuration with them; ``systemd-analyze
security --offline=yes`` scores the units in place.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from bus.mqtt import MqttAddress
from controllers.actuation.messages import MAX_COMMAND_BYTES, MAX_STATUS_BYTES, SiteKey
from models.errors import ConfigError
from models.site import load_site
from models.wire import MAX_BATCH_BYTES
from powerplane.cli import build_parser
from powerplane.commands.acl import Accounts, acl_text
from testbed.realservers import ShippedMosquitto, require
from tests.conftest import DEMO_SITE, ROOT

DEPLOY = ROOT / "deploy"
# The shipped ACL's accounts: the single box's, and the scaleout profile's (compose.yaml).
SHIPPED_ACCOUNTS = Accounts(controllers=("controller", "controller-a", "controller-b"),
                            collectors=("collector-0", "collector-1", "collector-2"), writers=("writer-0", "writer-1"))
SHIPPED_ACL_COMMAND = ("powerplane acl --site deploy/sites/demo.toml --twin --controllers controller,controller-a,"
                       "controller-b --collectors collector-0,collector-1,collector-2 --writers writer-0,writer-1 "
                       "--out deploy/mosquitto/acl")
PP_IMAGE = "powerplane:local"
BIND = "${POWERPLANE_BIND:-127.0.0.1}"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of every bind mount (named volumes skipped)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out[dst] = (DEPLOY / src).resolve()
    return out


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if not src.startswith((".", "/")):
            out[dst] = src
    return out


def powerplane_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if s.get("image") == PP_IMAGE}


def account_uids() -> dict[str, int]:
    text = compose()["services"]["init"]["environment"]["ACCOUNT_UIDS"]
    return {a: int(u) for a, u in (pair.split("=") for pair in text.split())}


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def shipped_accounts() -> list[str]:
    return [ln.split()[1] for ln in (DEPLOY / "mosquitto" / "acl").read_text().splitlines()
            if ln.startswith("user ")]


# ---- the ACL and the broker configuration ------------------------------------------------------

def test_shipped_acl_is_the_generators_output() -> None:
    """deploy/mosquitto/acl is ``SHIPPED_ACL_COMMAND``'s output, byte for byte."""
    want = acl_text(load_site(DEMO_SITE), SHIPPED_ACCOUNTS, twin=True)
    assert (DEPLOY / "mosquitto" / "acl").read_text() == want, f"stale: run `{SHIPPED_ACL_COMMAND}`"
    assert "\npattern " not in want and not want.startswith("pattern")


def _sections(conf: str) -> dict[str, list[str]]:
    """Lines of mosquitto.conf per listener ("" = before the first listener)."""
    out: dict[str, list[str]] = {"": []}
    cur = ""
    for ln in conf.splitlines():
        if not ln.strip() or ln.startswith("#"):
            continue
        if ln.startswith("listener "):
            cur = ln.split()[1]
            out[cur] = []
        out[cur].append(ln)
    return out


def test_mosquitto_conf_secures_the_authenticated_listener() -> None:
    sec = _sections((DEPLOY / "mosquitto" / "mosquitto.conf").read_text())
    assert set(sec) == {"", "1883", "1884"}
    assert "per_listener_settings true" in sec[""]
    limit = int(next(ln.split()[1] for ln in sec[""] if ln.startswith("message_size_limit ")))
    assert limit >= max(MAX_BATCH_BYTES, MAX_COMMAND_BYTES, MAX_STATUS_BYTES)  # the largest message fits
    assert limit <= 2 * MAX_BATCH_BYTES  # ... and junk much larger never reaches a subscriber
    auth = sec["1883"]
    assert auth[0] == "listener 1883 127.0.0.1"  # loopback unless configured
    for want in ("allow_anonymous false", "use_username_as_clientid true", "password_file /mosquitto/config/passwd",
                 "acl_file /mosquitto/config/acl"):
        assert want in auth
    demo = sec["1884"]
    assert demo[0] == "listener 1884 127.0.0.1" and "acl_file /mosquitto/config/acl.twin" in demo
    twin_acl = (DEPLOY / "mosquitto" / "acl.twin").read_text()
    assert "DEMO ONLY" in twin_acl and "powerplane" not in "".join(
        ln for ln in twin_acl.splitlines() if not ln.startswith("#"))


# ---- compose -----------------------------------------------------------------------------------

def test_compose_runs_the_plane_as_processes() -> None:
    """controller + one sim agent per rack + collector + twin, each through the real CLI."""
    services = compose()["services"]
    racks = [r.id for r in load_site(DEMO_SITE).racks]
    assert {"init", "mosquitto", "influxdb", "grafana", "twin", "collector", "controller"} <= set(services)
    assert {f"agent-{r}" for r in racks} <= set(services)
    parser = build_parser()
    parsed = {name: parser.parse_args(svc["command"]) for name, svc in powerplane_services().items()}
    assert parsed["controller"].command == "controller" and parsed["controller"].readings
    assert parsed["collector"].command == "collect" and parsed["collector"].publish
    assert parsed["twin"].command == "twin"
    for r in racks:
        a = parsed[f"agent-{r}"]
        assert (a.command, a.backend, a.rack) == ("agent", "sim", [r])
    for name, svc in powerplane_services().items():
        site = Path(parsed[name].site)
        host = next(src / site.relative_to(dst) for dst, src in bind_mounts(svc).items() if site.is_relative_to(dst))
        assert host.is_file(), f"{name}: site {site} -> {host}"


def test_compose_mqtt_accounts_match_the_acl_and_their_secrets() -> None:
    """Every process logs in to the authenticated listener as its own ACL account, with a password file
    that compose-init.sh gives to that account's uid; only the twin uses the demo-only anonymous listener."""
    accounts = set(shipped_accounts())
    uids = account_uids()
    assert set(uids) <= accounts and len(set(uids.values())) == len(uids)  # one uid per account
    parser = build_parser()
    for name, svc in powerplane_services().items():
        argv = svc["command"]
        args = parser.parse_args(argv)
        url = args.publish if args.command == "collect" else args.mqtt
        addr = MqttAddress.parse(url)  # a password in the URL would be refused here
        uid = int(str(svc["user"]).split(":")[0])
        if name == "twin":
            assert addr.port == 1884 and addr.username is None  # demo only, documented
            continue
        assert addr.port == 1883 and addr.username in accounts, name
        assert uids[addr.username] == uid, f"{name} runs as {uid}; its account's secrets are {uids[addr.username]}'s"
        secrets = volume_mounts(svc)
        for flag in ("--mqtt-password-file", "--key-file"):
            if flag in argv:
                path = Path(option(argv, flag))
                assert path.parent.name == addr.username, f"{name}: {flag} {path} is not its account's"
                assert secrets.get(str(path.parent.parent)) == "secrets", f"{name}: {path} not on the secrets volume"
        if args.command == "agent":
            assert addr.username == args.rack[0]  # the rack account (`powerplane acl --agents rack`)


def test_compose_ports_are_loopback_unless_configured() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith(f"{BIND}:"), f"{name}: {port} is published on every interface"
    published = {p.split(":")[-1] for s in compose()["services"].values() for p in s.get("ports", [])}
    assert "1884" not in published  # the demo-only anonymous listener never leaves the compose network


def test_compose_ships_no_secret() -> None:
    """No password, token or key in the compose file: services read generated files."""
    text = (DEPLOY / "compose.yaml").read_text()
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)\w*:\s*(?!/)\S", text), "a secret value inline"
    for name, svc in compose()["services"].items():
        env = svc.get("environment", {})
        for k, v in env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET", k):
                assert k.endswith("_FILE") and str(v).startswith("/run/secrets/"), f"{name}: {k}={v}"
    grafana = compose()["services"]["grafana"]
    ds = (DEPLOY / "grafana" / "provisioning" / "datasources" / "powerplane.yaml").read_text()
    files = re.findall(r"\$__file\{([^}]+)\}", ds)
    assert files and all(volume_mounts(grafana).get(str(Path(f).parent)) == "secrets-grafana" for f in files)
    used = set(re.findall(r"\$\{(\w+)\}", ds))
    assert used and used <= set(grafana["environment"])


def test_compose_references_only_existing_files() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        for dst, src in bind_mounts(svc).items():
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"
        assert set(volume_mounts(svc).values()) <= set(doc.get("volumes", {})), name
        build = svc.get("build")
        if build:
            ctx = (DEPLOY / build["context"]).resolve()
            assert (ctx / build["dockerfile"]).is_file(), name
        for dep in svc.get("depends_on", []):
            assert dep in doc["services"], f"{name} depends on unknown {dep}"
        if name != "init":
            assert "init" in svc.get("depends_on", {}), f"{name} may start before its secrets exist"


def test_compose_grafana_mounts_provisioning_and_dashboards() -> None:
    g = compose()["services"]["grafana"]
    m = bind_mounts(g)
    prov = DEPLOY / "grafana" / "provisioning"
    for kind in ("datasources", "dashboards", "alerting"):
        assert m[f"/etc/grafana/provisioning/{kind}"] == (prov / kind).resolve()
    provider = yaml.safe_load((prov / "dashboards" / "powerplane.yaml").read_text())["providers"][0]
    assert m[provider["options"]["path"]] == (ROOT / "dashboards" / "json").resolve()
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (m[str(Path(home).parent)] / Path(home).name).is_file()


def test_compose_controller_writes_where_grafana_reads() -> None:
    services = compose()["services"]
    env, influx = services["controller"]["environment"], services["influxdb"]["environment"]
    store_src = (ROOT / "store" / "config.py").read_text()
    read = set(re.findall(r'env\("(POWERPLANE_\w+)"', store_src))
    assert {k for k in env if k.startswith("POWERPLANE_")} <= read  # no setting the store ignores
    assert env["POWERPLANE_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert env["POWERPLANE_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert services["grafana"]["environment"]["INFLUX_DATABASE"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    # The token is the same generated secret for all three (test_compose_init_generates_the_secrets).
    assert env["POWERPLANE_INFLUX_TOKEN_FILE"].endswith("/controller/influx-token")
    assert influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"].endswith("/influxdb/admin-token")


def test_influxdb_init_maps_the_database_grafana_queries() -> None:
    svc = compose()["services"]["influxdb"]
    init = bind_mounts(svc)["/docker-entrypoint-initdb.d"]
    scripts = sorted(init.glob("*.sh"))
    assert scripts and all(s.stat().st_mode & 0o111 for s in scripts)
    text = "".join(s.read_text() for s in scripts)
    assert "influx v1 dbrp create" in text
    r = subprocess.run(["sh", "-n", *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dockerfile_copies_every_package() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    copies = [shlex.split(ln)[1:-1] for ln in lines if ln.startswith("COPY ")]
    copied = {src for srcs in copies for src in srcs}
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: missing (context is the repository root)"
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r'include = \[([^]]+)\]', pyproject)
    assert include
    packages = {p.strip(' "*') for p in include.group(1).split(",")}
    assert packages <= copied, f"the image lacks {packages - copied}"
    assert any("nvml" in ln for ln in lines if ln.startswith("RUN pip install"))  # the agent's NVML backend
    assert any(ln.startswith("ENTRYPOINT") and "powerplane" in ln for ln in lines)


# ---- compose first start: the secrets, for real -----------------------------------------------

@pytest.fixture
def compose_init(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Run deploy/compose-init.sh as the init service would (twice: it must be idempotent)."""
    svc = compose()["services"]["init"]
    dirs = {dst: tmp_path / vol.replace("-", "_") for dst, vol in volume_mounts(svc).items()}
    env = {**os.environ, **svc["environment"], "DEPLOY": str(bind_mounts(svc)["/deploy"])}
    names = {"/secrets": "SECRETS", "/secrets-influxdb": "SECRETS_INFLUXDB", "/secrets-grafana": "SECRETS_GRAFANA",
             "/broker": "BROKER", "/state": "STATE", "/twin-run": "TWIN_RUN", "/controller-data": "CONTROLLER_DATA",
             "/account-data": "ACCOUNT_DATA"}
    assert set(names) == set(dirs), "compose-init.sh's directories and the init service's volumes differ"
    env.update({names[dst]: str(p) for dst, p in dirs.items()})
    path_dir = tmp_path / "bin"
    path_dir.mkdir()
    os.symlink(require("mosquitto_passwd"), path_dir / "mosquitto_passwd")
    if os.geteuid() != 0:  # chown to other uids needs root: check modes only
        (path_dir / "chown").write_text("#!/bin/sh\nexit 0\n")
        (path_dir / "chown").chmod(0o755)
    env["PATH"] = f"{path_dir}:{env['PATH']}"
    script = bind_mounts(svc)["/compose-init.sh"]
    for _ in range(2):
        r = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    yield {dst: p for dst, p in dirs.items()}


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_compose_init_generates_the_secrets(compose_init: dict[str, Path]) -> None:
    secrets = compose_init["/secrets"]
    uids = account_uids()
    accounts = shipped_accounts()
    racks = [r.id for r in load_site(DEMO_SITE).racks]
    controllers, writers = SHIPPED_ACCOUNTS.controllers, SHIPPED_ACCOUNTS.writers
    for a in accounts:
        d = secrets / a
        assert _mode(d) == 0o500, a
        files = {p.name for p in d.iterdir()}
        want = {"mqtt.password"} | ({"site.key"} if a in controllers or a in racks else set()) | \
            ({"influx-token"} if a in controllers or a in writers else set())
        assert files == want, a
        for f in d.iterdir():
            assert _mode(f) == 0o400, f
            if os.geteuid() == 0:
                assert f.stat().st_uid == uids.get(a, 0), f
        assert len((d / "mqtt.password").read_text()) == 64
    keys = {(secrets / a / "site.key").read_text() for a in ["controller", *racks]}
    assert len(keys) == 1 and SiteKey.load(secrets / "controller" / "site.key").secret  # 0400 is accepted
    token = (secrets / "controller" / "influx-token").read_text()
    assert (compose_init["/secrets-influxdb"] / "admin-token").read_text() == token
    assert (compose_init["/secrets-grafana"] / "influx-token").read_text() == token
    passwords = {(secrets / a / "mqtt.password").read_text() for a in accounts}
    assert len(passwords) == len(accounts)  # every account its own
    broker = compose_init["/broker"]
    assert sorted(p.name for p in broker.iterdir()) == ["acl", "acl.twin", "mosquitto.conf", "passwd"]
    assert all(_mode(p) == 0o600 for p in broker.iterdir())
    for a in racks:
        assert _mode(compose_init["/state"] / a) == 0o700
    # The scaleout profile's controllers and writers: a private directory each; the single box's
    # controller keeps /controller-data.
    own = sorted(p.name for p in compose_init["/account-data"].iterdir())
    assert own == sorted([*controllers[1:], *writers])
    for a in own:
        d = compose_init["/account-data"] / a
        assert _mode(d) == 0o700 and (os.geteuid() != 0 or d.stat().st_uid == uids[a]), a
    assert os.geteuid() != 0 or compose_init["/controller-data"].stat().st_uid == uids["controller"]


@pytest.mark.servers
def test_compose_broker_accepts_each_generated_account(compose_init: dict[str, Path], tmp_path: Path) -> None:
    """The broker configuration and password file compose-init.sh wrote, run by mosquitto: every
    account logs in with its generated password, and a wrong one is refused."""
    broker = compose_init["/broker"]
    conf = (broker / "mosquitto.conf").read_text()
    assert "listener 1883\n" in conf  # on the compose network inside the container; published on loopback
    srv = ShippedMosquitto(tmp_path / "broker", (broker / "acl").read_text(), {}, conf=broker / "mosquitto.conf",
                           twin_acl=broker / "acl.twin", passwd=broker / "passwd")
    srv.start()
    try:
        clients = {a: _client(srv.port, a, (compose_init["/secrets"] / a / "mqtt.password").read_text())
                   for a in shipped_accounts()}
        clients["wrong"] = _client(srv.port, "controller", "wrong")
        for c, _, _ in clients.values():
            c.disconnect()
            c.loop_stop()
        assert {a: rc for a, (_, _, rc) in clients.items() if rc != 0} == {"wrong": 135}  # not authorized
    finally:
        srv.stop()


# ---- mosquitto as shipped ------------------------------------------------------------------------

def _client(port: int, user: str | None, password: str | None,
            client_id: str | None = None) -> tuple[mqtt.Client, list[tuple[str, bytes]], int]:
    got: list[tuple[str, bytes]] = []
    done = threading.Event()
    rc: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}-{port}")
    if user:
        c.username_pw_set(user, password)
    c.on_connect = lambda cl, ud, fl, reason, props: (rc.append(reason.value), done.set())
    c.on_message = lambda cl, ud, msg: got.append((msg.topic, msg.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(10)
    return c, got, rc[0]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[ShippedMosquitto, dict[str, str]]]:
    users = {a: f"pw-{a}" for a in shipped_accounts()}
    srv = ShippedMosquitto(tmp_path, (DEPLOY / "mosquitto" / "acl").read_text(), users)
    srv.start()
    yield srv, users
    srv.stop()


@pytest.mark.servers
def test_mosquitto_auth_and_acls(broker: tuple[ShippedMosquitto, dict[str, str]]) -> None:
    srv, creds = broker
    # no anonymous clients and no wrong passwords on the authenticated listener
    for user, password in ((None, None), ("controller", "wrong")):
        c, _, rc = _client(srv.port, user, password)
        c.loop_stop()
        assert rc != 0, user
    ctl, _, rc = _client(srv.port, "controller", creds["controller"])
    assert rc == 0
    ag, got, rc = _client(srv.port, "r01", creds["r01"])
    assert rc == 0
    own, foreign = "powerplane/demo-hall/caps/r01", "powerplane/demo-hall/caps/r02"
    for topic in (own, foreign, "powerplane/demo-hall/caps/#"):
        ag.subscribe(topic, qos=1)
    # An agent cannot forge caps (its own included); acknowledged before the controller publishes,
    # so had the broker accepted it, the agent would receive it before the controller's messages.
    ag.publish(own, b"forged", qos=1).wait_for_publish(5)
    ctl.publish(foreign, b"theirs", qos=1).wait_for_publish(5)
    ctl.publish(own, b"mine", qos=1).wait_for_publish(5)
    for _ in range(200):  # messages of one publisher reach a subscriber in order: "mine" comes last
        if any(p == b"mine" for _, p in got):
            break
        threading.Event().wait(0.05)
    for c in (ctl, ag):
        c.loop_stop()
        c.disconnect()
    assert {(t, p) for t, p in got} == {(own, b"mine")}, got

    # the twin's anonymous listener accepts connections (its ACL grants nothing under powerplane/)
    tw, _, rc = _client(srv.twin_port, None, None)
    tw.loop_stop()
    assert rc == 0


# ---- systemd -------------------------------------------------------------------------------------

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
CONTROLLER_UNIT = DEPLOY / "systemd" / "powerplane-controller.service"
AGENT_UNIT = DEPLOY / "systemd" / "powerplane-agent.service"
# systemd-analyze security's exposure, times ten: --threshold fails a unit scored above it.
MAX_EXPOSURE = {CONTROLLER_UNIT.name: 40, AGENT_UNIT.name: 60}


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def _multi(path: Path, key: str) -> list[str]:
    """Every value of a (repeatable) ``key=`` in the unit's [Service] section."""
    return [ln.split("=", 1)[1] for ln in path.read_text().splitlines() if ln.startswith(f"{key}=")]


def _env(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln and not ln.startswith("#"))


def security_command(unit: Path) -> list[str]:
    """The exact command the README gives: score a unit file in place, offline."""
    return ["systemd-analyze", "security", "--offline=yes", f"--threshold={MAX_EXPOSURE[unit.name]}",
            str(unit.relative_to(ROOT))]


@pytest.mark.parametrize("unit", [CONTROLLER_UNIT, AGENT_UNIT], ids=lambda p: p.stem)
def test_systemd_exposure_is_within_target(unit: Path) -> None:
    """systemd-analyze scores the shipped unit file in place (no --root, no copy) at or under its target."""
    cmd = security_command(unit)
    cmd[0] = require(cmd[0])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    score = float(m.group(1))
    print(f"{unit.name}: exposure {score} (target <= {MAX_EXPOSURE[unit.name] / 10:.1f})")
    assert r.returncode == 0 and score * 10 <= MAX_EXPOSURE[unit.name], r.stdout[-3000:]
    assert r.stderr.strip() == "", r.stderr  # no directive systemd does not know


def test_systemd_units_parse_and_reference_their_env_files() -> None:
    assert {p.name for p in UNITS} == {CONTROLLER_UNIT.name, AGENT_UNIT.name}
    parser = build_parser()
    for path in UNITS:
        u = _unit(path)
        svc = u["Service"]
        assert {"Unit", "Service", "Install"} <= set(u.sections()), path.name
        exec_start = shlex.split(svc["ExecStart"])
        assert exec_start[0] == "/opt/powerplane/venv/bin/powerplane"
        env_file = Path(svc["EnvironmentFile"])
        shipped = DEPLOY / "systemd" / env_file.name
        assert env_file.parent == Path("/etc/powerplane") and shipped.is_file(), path.name
        env = _env(shipped)
        used = set(re.findall(r"\$\{(\w+)\}", svc["ExecStart"]))
        assert used <= set(env), f"{path.name}: {used - set(env)} not in {shipped.name}"
        argv = [a if not a.startswith("${") else env[a[2:-1]] for a in exec_start[1:]]
        args = parser.parse_args(argv)
        addr = MqttAddress.parse(args.mqtt)  # refuses a password in the URL
        assert addr.password is None and args.mqtt_password_file and args.key_file
        # hardening every unit shares (issue 13, finding 10)
        assert svc["UMask"] == "0077" and svc["NoNewPrivileges"] == "true" and svc["ProtectSystem"] == "strict"
        state = Path("/var/lib") / svc["StateDirectory"]
        assert svc["WorkingDirectory"] == str(state) and Path(option(argv, "--state-dir")).is_relative_to(state)
        assert svc["User"] not in ("root", "0") and svc["User"] != _unit(
            AGENT_UNIT if path == CONTROLLER_UNIT else CONTROLLER_UNIT)["Service"]["User"]
        assert u["Install"]["WantedBy"] == "multi-user.target"


def test_env_files_hold_paths_never_secrets() -> None:
    for path in sorted((DEPLOY / "systemd").glob("*.env")):
        for k, v in _env(path).items():
            if re.search(r"PASSWORD|TOKEN|SECRET|KEY", k):
                assert k.endswith("_FILE") and v.startswith("/etc/powerplane/"), f"{path.name}: {k}={v}"
            if k.endswith("_MQTT_URL"):
                MqttAddress.parse(v)  # refuses a URL that carries a password
            assert "change-me" not in v


def test_controller_unit_runs_with_its_env_file(tmp_path: Path) -> None:
    """Everything the controller needs comes from controller.env: parse ExecStart with it, read the
    secret files it names (moved under tmp_path) and open the store settings as the controller would."""
    from powerplane.commands.common import mqtt_address
    from store.config import store_config_from_args

    svc = _unit(CONTROLLER_UNIT)["Service"]
    shipped = _env(DEPLOY / "systemd" / "controller.env")
    env = {k: v.replace("/etc/powerplane/", f"{tmp_path}/") for k, v in shipped.items()}
    for k, v in env.items():
        if k.endswith("_FILE"):
            Path(v).parent.mkdir(parents=True, exist_ok=True)
            Path(v).write_text(os.urandom(32).hex())
            Path(v).chmod(0o600)
    argv = [env[a[2:-1]] if a.startswith("${") else a for a in shlex.split(svc["ExecStart"])[1:]]
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        args = build_parser().parse_args(argv)
        cfg = store_config_from_args(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert mqtt_address(args).password == Path(env["POWERPLANE_MQTT_PASSWORD_FILE"]).read_text()
    assert SiteKey.load(args.key_file).secret
    assert cfg.influx_url and cfg.influx_org and cfg.influx_bucket  # open_sink refuses a store without them
    assert cfg.influx_token == Path(env["POWERPLANE_INFLUX_TOKEN_FILE"]).read_text()
    assert svc["Type"] == "notify" and svc["WatchdogSec"] and svc["NotifyAccess"] == "main"


def test_agent_unit_has_only_the_capability_nvml_needs() -> None:
    svc = _unit(AGENT_UNIT)["Service"]
    assert svc["CapabilityBoundingSet"] == "CAP_SYS_ADMIN" == svc["AmbientCapabilities"]
    assert svc["User"] == "powerplane-agent"
    argv = shlex.split(svc["ExecStart"])
    assert "--node-from-hostname" in argv and option(argv, "--backend") == "nvml"
    assert _multi(AGENT_UNIT, "DeviceAllow") == ["char-nvidia* rw"] and svc["DevicePolicy"] == "closed"
    env = _env(DEPLOY / "systemd" / "agent.env")
    assert MqttAddress.parse(env["POWERPLANE_MQTT_URL"]).username is None  # its node's account, derived


def test_agent_unit_finds_its_node_and_account_from_the_host_name() -> None:
    """The default hostname_template maps a host to its node, and the node to its ACL account."""
    from controllers.actuation.layout import Layouts
    from models.topology import build_topology
    from powerplane.commands.agent import account, units_wanted

    site = load_site(DEMO_SITE)
    layouts = Layouts(build_topology(site))
    args = argparse.Namespace(rack=[], node=[], node_from_hostname=True, hostname="r03-node-007.dc1.example",
                              backend="nvml")
    wanted = units_wanted(args, layouts, site)
    assert wanted == [("r03", [7])]
    acct = account(wanted, layouts)
    assert acct == "r03@node-007" and f"user {acct}\n" in acl_text(site, agents="node")


# ---- kubernetes ---------------------------------------------------------------------------------

def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _workload(kind: str) -> dict[str, Any]:
    (d,) = [d for d in _manifests() if d["kind"] == kind]
    return d


def test_k8s_manifests_parse_and_cross_reference() -> None:
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "powerplane-controller") in kinds and ("DaemonSet", "powerplane-agent") in kinds
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: dict(d["stringData"]) for d in docs if d["kind"] == "Secret"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    keys = {k for d in docs if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    site_cm = (DEPLOY / "k8s" / "configmap.yaml").read_text()
    parser = build_parser()
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] in namespaces, d["metadata"]["name"]
        if d["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = d["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            for ref in c.get("envFrom", []):
                assert "secretRef" not in ref, "secrets are files, not environment variables"
                assert ref["configMapRef"]["name"] in configmaps
            env = {e["name"] for e in c.get("env", [])} | keys
            words = c.get("args", []) + c.get("command", [])
            for var in re.findall(r"\$\((\w+)\)", " ".join(words)):
                assert var in env, f"{d['metadata']['name']}: $({var}) is not defined"
                assert not re.search(r"PASSWORD|TOKEN|SECRET|KEY", var), f"a secret in argv: $({var})"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes)
            if c.get("args"):
                args = parser.parse_args([re.sub(r"\$\((\w+)\)", lambda m: "1883" if "PORT" in m.group(1) else "x", a)
                                          for a in c["args"]])
                assert MqttAddress.parse(args.mqtt).password is None
                for flag in ("--mqtt-password-file", "--key-file"):
                    path = option(c["args"], flag)
                    vol = volumes[next(n for p, n in mounts.items() if path.startswith(p + "/"))]
                    assert "secret" in vol or vol.get("emptyDir", {}).get("medium") == "Memory", f"{flag} {path}"
        for v in volumes.values():
            if "configMap" in v:
                name = v["configMap"]["name"]
                # the site ConfigMap is created from the site file; configmap.yaml says how
                assert name in configmaps or f"create configmap {name} --from-file" in site_cm, name
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets and v["secret"]["defaultMode"] == 0o400
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    for values in secrets.values():  # the example secrets hold placeholders, and the programs refuse them
        assert values and all(v == "REPLACE" for v in values.values())
    with pytest.raises(ConfigError, match="at least 16 needed"):
        SiteKey.parse("REPLACE", "site.key")


def test_k8s_controller_keeps_its_epoch_and_a_private_key() -> None:
    pod = _workload("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (c,) = pod["containers"]
    state = next(m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/powerplane")
    assert "persistentVolumeClaim" in volumes[state["name"]]  # an emptyDir would forget the epoch
    assert option(c["args"], "--state-dir").startswith("/var/lib/powerplane/")
    # fsGroup makes secret files 0440, which SiteKey.load refuses: an init container copies them 0400.
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0400"]
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_k8s_agent_finds_its_node_from_the_node_name() -> None:
    ds = _workload("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    node_env = next(e for e in c["env"] if e["name"] == "NODE_NAME")
    assert node_env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    args = c["args"]
    assert "--node-from-hostname" in args and option(args, "--hostname") == "$(NODE_NAME)"
    assert MqttAddress.parse(option(args, "--mqtt").replace("$(MQTT_HOST)", "h").replace("$(MQTT_PORT)", "1")
                             ).username is None  # the node's account, derived from the node
    assert option(args, "--mqtt-password-file").endswith("/$(NODE_NAME)")
    sc = c["securityContext"]
    assert not sc.get("privileged") and sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True


def test_service_commands_exist_in_the_cli() -> None:
    parser = build_parser()
    for path in UNITS:
        argv = shlex.split(_unit(path)["Service"]["ExecStart"])[1:]
        parser.parse_args([a if not a.startswith("${") else "x" for a in argv])


def test_readme_gives_the_scoring_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for unit in (CONTROLLER_UNIT, AGENT_UNIT):
        cmd = " ".join(security_command(unit))
        assert cmd in readme, cmd


def test_deploy_scripts_are_posix_sh() -> None:
    for script in (DEPLOY / "compose-init.sh", *sorted((DEPLOY / "slurm").glob("*.sh"))):
        r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"
    assert shutil.which("sh") and sys.executable


# ---- Prometheus and the probes --------------------------------------------------------------------

def _container(kind: str) -> dict[str, Any]:
    (c,) = _workload(kind)["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_k8s_probes_use_the_health_endpoints_on_the_metrics_port(kind: str) -> None:
    """The kubelet probes /healthz (liveness, startup) and /readyz (readiness) on the port the process
    serves with --metrics, on an address the kubelet reaches; the paths are the ones served."""
    from powerplane.exposition import routes

    c = _container(kind)
    host, port = option(c["args"], "--metrics").rsplit(":", 1)
    assert host == "0.0.0.0"
    (p,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert p["containerPort"] == int(port)
    served = {path for _m, path in routes(None, lambda: (True, ""), lambda: (True, ""))}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in c:
            assert c[probe]["httpGet"]["path"] in served
    if kind == "Deployment":  # numba's first compile must not count against liveness
        sp = c["startupProbe"]
        assert sp["httpGet"]["path"] == "/healthz" and sp["periodSeconds"] * sp["failureThreshold"] >= 120


def test_servicemonitor_and_podmonitor_select_what_serves_metrics() -> None:
    docs = _manifests()
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "powerplane-controller-metrics"]
    pod_labels = _workload("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (sp,) = svc["spec"]["ports"]
    assert sp["targetPort"] == "metrics" and sp["port"] == int(option(_container("Deployment")["args"],
                                                                     "--metrics").rsplit(":", 1)[1])
    mons = {d["kind"]: d for d in (yaml.safe_load((DEPLOY / "prometheus" / f).read_text())
                                   for f in ("servicemonitor.yaml", "podmonitor.yaml"))}
    sm, pm = mons["ServiceMonitor"], mons["PodMonitor"]
    assert sm["apiVersion"] == pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [sp["name"]]
    agent_pod = _workload("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= agent_pod.items()
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]
    for m in (sm, pm):
        for e in m["spec"].get("endpoints", []) + m["spec"].get("podMetricsEndpoints", []):
            assert e["path"] == "/metrics"


def test_prometheus_scrape_config_targets_the_default_addresses() -> None:
    from powerplane.exposition import AGENT_SUGGESTED, COLLECTOR_DEFAULT, CONTROLLER_DEFAULT

    doc = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    want = {"powerplane-controller": CONTROLLER_DEFAULT, "powerplane-collect": COLLECTOR_DEFAULT,
            "powerplane-agent": AGENT_SUGGESTED}
    for name, addr in want.items():
        assert jobs[name]["metrics_path"] == "/metrics"
        assert jobs[name]["static_configs"][0]["targets"] == [addr]
    k8s = jobs["powerplane-k8s"]
    keep = [r for r in k8s["relabel_configs"] if r.get("action") == "keep"]
    assert {r["regex"] for r in keep} == {"powerplane", "metrics"}


def test_k8s_jobs_rbac_is_read_only() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "k8s-jobs" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert build_parser().parse_args(["controller", "--site", "s", "--mqtt", "mqtt://h:1", "--k8s-jobs",
                                      "in-cluster"]).k8s_jobs == "in-cluster"
