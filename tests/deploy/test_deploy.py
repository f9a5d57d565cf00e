"""The deploy files parse, agree with each other and reference only files that exist.

No Docker or Kubernetes here: compose, the Dockerfile, systemd units and manifests are
checked by parsing and cross-referencing; commands are parsed by powerplane's own argument
parser. The Mosquitto configuration is the exception: it runs, for real, under the local
mosquitto, and its ACLs are exercised by MQTT clients.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from powerplane.cli import build_parser
from testbed.realservers import Server, free_port, require, wait_tcp
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


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


# ---- compose ----------------------------------------------------------------------------------

def test_compose_has_the_stack() -> None:
    services = compose()["services"]
    assert {"mosquitto", "influxdb", "grafana", "controller", "twin"} <= set(services)
    assert services["influxdb"]["image"].startswith("influxdb:2")
    assert re.match(r"grafana/grafana(-oss)?:1[12]\.", services["grafana"]["image"])


def test_compose_references_only_existing_files() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        for dst, src in bind_mounts(svc).items():
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"
        named = [v.split(":")[0] for v in svc.get("volumes", []) if not v.startswith((".", "/"))]
        assert set(named) <= set(doc.get("volumes", {})), name
        build = svc.get("build")
        if build:
            ctx = (DEPLOY / build["context"]).resolve()
            assert (ctx / build["dockerfile"]).is_file(), name
        for dep in svc.get("depends_on", []):
            assert dep in doc["services"], f"{name} depends on unknown {dep}"


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
    # every ${VAR} of the datasource file is set in Grafana's environment
    used = set(re.findall(r"\$\{(\w+)\}", (prov / "datasources" / "powerplane.yaml").read_text()))
    assert used and used <= set(g["environment"])


def test_compose_commands_parse_with_our_cli() -> None:
    services = compose()["services"]
    parser = build_parser()
    for name in ("controller", "twin"):
        svc = services[name]
        args = parser.parse_args(svc["command"])
        site = Path(args.site)
        mounts = bind_mounts(svc)
        host = next(src / site.relative_to(dst) for dst, src in mounts.items() if site.is_relative_to(dst))
        assert host.is_file(), f"{name}: site {site} -> {host}"


def test_influxdb_init_maps_the_database_grafana_queries() -> None:
    svc = compose()["services"]["influxdb"]
    init = bind_mounts(svc)["/docker-entrypoint-initdb.d"]
    scripts = sorted(init.glob("*.sh"))
    assert scripts and all(s.stat().st_mode & 0o111 for s in scripts)
    text = "".join(s.read_text() for s in scripts)
    assert "influx v1 dbrp create" in text
    r = subprocess.run(["sh", "-n", *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    db = compose()["services"]["grafana"]["environment"]["INFLUX_DATABASE"]
    assert svc["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"] == db


def test_dockerfile_copies_only_what_exists() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    copies = [shlex.split(ln)[1:-1] for ln in lines if ln.startswith("COPY ")]
    assert copies
    for srcs in copies:
        for src in srcs:
            assert (ROOT / src).exists(), f"COPY {src}: missing (context is the repository root)"
    assert any(ln.startswith("ENTRYPOINT") and "powerplane" in ln for ln in lines)


# ---- mosquitto --------------------------------------------------------------------------------

class DeployedMosquitto(Server):
    """The local mosquitto running deploy/mosquitto/mosquitto.conf, paths mapped as compose mounts them."""

    name = "mosquitto-deploy"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = require("mosquitto")
        self.port = free_port()
        self.twin_port = free_port()

    def prepare(self) -> None:
        svc = compose()["services"]["mosquitto"]
        mounts = bind_mounts(svc)
        # What the compose entrypoint does: hash the demo credentials into the password file.
        plain = mounts["/mosquitto/config/passwd.example"].read_text().splitlines()
        passwd = self.workdir / "passwd"
        passwd.write_text("".join(ln + "\n" for ln in plain if ln and not ln.startswith("#")))
        subprocess.run([require("mosquitto_passwd"), "-U", str(passwd)], check=True)
        mounts["/mosquitto/config/passwd"] = passwd
        (self.workdir / "data").mkdir(exist_ok=True)
        out = []
        for ln in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines():
            key, _, val = ln.partition(" ")
            if key in ("password_file", "acl_file"):
                assert val in mounts, f"{key} {val}: not mounted in compose"
                ln = f"{key} {mounts[val]}"
            elif key == "persistence_location":
                ln = f"{key} {self.workdir / 'data'}/"
            elif ln == "listener 1883":
                ln = f"listener {self.port} 127.0.0.1"
            elif ln == "listener 1884":
                ln = f"listener {self.twin_port} 127.0.0.1"
            out.append(ln)
        out.append("user root")  # as the fixture does: never drop privileges inside pytest's tmp
        (self.workdir / "mosquitto.conf").write_text("\n".join(out) + "\n")

    def command(self) -> list[str]:
        return [self.exe, "-c", str(self.workdir / "mosquitto.conf")]

    def ready(self) -> bool:
        return wait_tcp(self.port) and wait_tcp(self.twin_port)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    srv = DeployedMosquitto(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _client(port: int, user: str | None, password: str | None) -> tuple[mqtt.Client, list[tuple[str, bytes]], int]:
    got: list[tuple[str, bytes]] = []
    done = threading.Event()
    rc: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{port}")
    if user:
        c.username_pw_set(user, password)
    c.on_connect = lambda cl, ud, fl, reason, props: (rc.append(reason.value), done.set())
    c.on_message = lambda cl, ud, msg: got.append((msg.topic, msg.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(10)
    return c, got, rc[0]


def _creds() -> dict[str, str]:
    text = (DEPLOY / "mosquitto" / "passwd.example").read_text()
    return dict(ln.split(":", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))


@pytest.mark.servers
def test_mosquitto_auth_and_acls(broker: DeployedMosquitto) -> None:
    creds = _creds()
    agent = next(u for u in creds if u not in ("controller", "collector", "operator"))
    # no anonymous clients and no wrong passwords on the authenticated listener
    for user, password in ((None, None), ("controller", "wrong")):
        c, _, rc = _client(broker.port, user, password)
        c.loop_stop()
        assert rc != 0, user
    ctl, _, rc = _client(broker.port, "controller", creds["controller"])
    assert rc == 0
    ag, got, rc = _client(broker.port, agent, creds[agent])
    assert rc == 0
    own, foreign = f"powerplane/demo-hall/caps/{agent}", "powerplane/demo-hall/caps/r02-n07"
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

    # the twin's anonymous listener accepts connections (its ACL allows only grid/BMS writes)
    tw, _, rc = _client(broker.twin_port, None, None)
    tw.loop_stop()
    assert rc == 0


# ---- systemd ----------------------------------------------------------------------------------

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_systemd_units_parse_and_reference_their_env_files() -> None:
    assert {p.name for p in UNITS} == {"powerplane-controller.service", "powerplane-agent.service"}
    for path in UNITS:
        u = _unit(path)
        assert {"Unit", "Service", "Install"} <= set(u.sections()), path.name
        exec_start = shlex.split(u["Service"]["ExecStart"])
        assert exec_start[0] == "/opt/powerplane/venv/bin/powerplane"
        env_file = Path(u["Service"]["EnvironmentFile"])
        shipped = DEPLOY / "systemd" / env_file.name
        assert env_file.parent == Path("/etc/powerplane") and shipped.is_file(), path.name
        defined = {ln.split("=", 1)[0] for ln in shipped.read_text().splitlines() if "=" in ln and ln[0] != "#"}
        used = set(re.findall(r"\$\{(\w+)\}", u["Service"]["ExecStart"]))
        assert used <= defined, f"{path.name}: {used - defined} not in {shipped.name}"
        assert u["Install"]["WantedBy"] == "multi-user.target"


# ---- kubernetes -------------------------------------------------------------------------------

def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_manifests_parse_and_cross_reference() -> None:
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "powerplane-controller") in kinds and ("DaemonSet", "powerplane-agent") in kinds
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    keys = {k for d in docs if d["kind"] in ("ConfigMap", "Secret") for k in d.get("data", d.get("stringData", {}))}
    site_cm = (DEPLOY / "k8s" / "configmap.yaml").read_text()
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] in namespaces, d["metadata"]["name"]
        if d["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = d["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        pod = spec["template"]["spec"]
        for c in pod["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] in secrets
            env = {e["name"] for e in c.get("env", [])} | keys
            for var in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
                assert var in env, f"{d['metadata']['name']}: $({var}) is not defined"
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])}
        for v in pod.get("volumes", []):
            if "configMap" in v:
                name = v["configMap"]["name"]
                # the site ConfigMap is created from the site file; configmap.yaml says how
                assert name in configmaps or f"create configmap {name} --from-file" in site_cm, name


def test_k8s_agent_logs_in_as_its_node() -> None:
    (ds,) = [d for d in _manifests() if d["kind"] == "DaemonSet"]
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    node_env = next(e for e in c["env"] if e["name"] == "NODE_NAME")
    assert node_env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "mqtt://$(NODE_NAME):" in " ".join(c["args"])  # user name = node: the %u ACL pattern


def test_service_commands_exist_in_the_cli() -> None:
    parser = build_parser()
    for path in UNITS:
        argv = shlex.split(_unit(path)["Service"]["ExecStart"])[1:]
        parser.parse_args([a if not a.startswith("${") else "x" for a in argv])


def test_compose_controller_writes_where_grafana_reads() -> None:
    services = compose()["services"]
    env, influx = services["controller"]["environment"], services["influxdb"]["environment"]
    store_src = (ROOT / "store" / "config.py").read_text()
    read = set(re.findall(r'env\("(POWERPLANE_\w+)"', store_src))
    assert {k for k in env if k.startswith("POWERPLANE_")} <= read  # no setting the store ignores
    assert env["POWERPLANE_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert env["POWERPLANE_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert env["POWERPLANE_INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert services["grafana"]["environment"]["INFLUX_TOKEN"] == influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
