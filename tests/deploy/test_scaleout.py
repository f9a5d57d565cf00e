"""The scale-out deploy files (compose profile ``scaleout``, ``deploy/k8s/scaleout/``) parse, agree with
each other, with the ACL and with the CLI: sharded collectors, store writers, two controllers with etcd."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bus.mqtt import MqttAddress
from collectors.shard import parse_shard
from controllers.authority.etcd import parse_endpoints
from models.site import load_site
from powerplane.cli import build_parser
from powerplane.commands.acl import Accounts, acl_text
from tests.conftest import DEMO_SITE, ROOT
from tests.deploy.test_deploy import SHIPPED_ACCOUNTS, compose, option, shipped_accounts

K8S = ROOT / "deploy" / "k8s"
SCALEOUT = K8S / "scaleout"


# ---- compose profile scaleout -------------------------------------------------------------------------
def _profile(name: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if name in s.get("profiles", [])}


def test_compose_scaleout_profile_shards_writers_two_controllers_and_etcd() -> None:
    services = compose()["services"]
    scale = _profile("scaleout")
    assert {"etcd", "controller-a", "controller-b", "writer-0", "writer-1"} <= set(scale)
    # The single box's services keep working without a profile (`docker compose up`).
    for name in ("collector", "controller", "twin", "mosquitto", "influxdb"):
        assert "profiles" not in services[name], name
    parser = build_parser()
    parsed = {n: parser.parse_args(s["command"]) for n, s in scale.items() if n != "etcd"}
    shards = [parse_shard(a.shard) for a in parsed.values() if a.command == "collect"]
    assert sorted(s.index for s in shards) == list(range(3)) and {s.count for s in shards} == {3}
    users = [MqttAddress.parse(a.publish if a.command == "collect" else a.mqtt).username for a in parsed.values()]
    assert len(set(users)) == len(users)  # one account, one connection
    assert set(users) <= set(shipped_accounts())
    ctl = {n: a for n, a in parsed.items() if a.command == "controller"}
    assert len(ctl) == 2
    etcd_cmd = services["etcd"]["command"]
    client_port = option(etcd_cmd, "--listen-client-urls").rsplit(":", 1)[1]
    for n, a in ctl.items():
        assert parse_endpoints(a.authority) == [("http", "etcd", int(client_port))]
        assert a.controller_id == n and a.no_store_readings and a.readings
        assert "etcd" in scale[n]["depends_on"]
    writers = {n: a for n, a in parsed.items() if a.command == "store-writer"}
    assert len(writers) == 2 and all(w.site for w in writers.values())
    data_dirs = [str(w.data_dir) for w in writers.values()] + [str(a.data_dir) for a in ctl.values()]
    assert len(set(data_dirs)) == len(data_dirs)  # a spool and a state each
    for n in writers:
        env = scale[n]["environment"]
        assert env["POWERPLANE_INFLUX_TOKEN_FILE"].endswith(f"/{MqttAddress.parse(writers[n].mqtt).username}"
                                                            "/influx-token")


def test_compose_scaleout_accounts_are_the_shipped_acls() -> None:
    text = acl_text(load_site(DEMO_SITE), SHIPPED_ACCOUNTS, twin=True)
    for w in SHIPPED_ACCOUNTS.writers:
        assert f"user {w}\ntopic read powerplane/demo-hall/readings/+\n\n" in text


def test_readme_gives_the_scaleout_compose_command() -> None:
    header = (ROOT / "deploy" / "compose.yaml").read_text()
    cmd = ("docker compose -f deploy/compose.yaml --profile scaleout up -d --build --scale collector=0 "
           "--scale controller=0")
    assert cmd in header and cmd in (ROOT / "README.md").read_text()


# ---- Kubernetes -------------------------------------------------------------------------------------------
def _docs(where: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted(where.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(p.read_text()) if d]
    return out


def _sets() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _docs(SCALEOUT) if d["kind"] == "StatefulSet"}


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in words]


def test_k8s_scaleout_workloads_and_their_replicas() -> None:
    sets = _sets()
    assert set(sets) == {"powerplane-etcd", "powerplane-controllers", "powerplane-collectors", "powerplane-writers"}
    assert sets["powerplane-etcd"]["spec"]["replicas"] == 3  # a quorum survives one loss
    assert sets["powerplane-controllers"]["spec"]["replicas"] == 2
    assert sets["powerplane-collectors"]["spec"]["replicas"] >= 2
    assert sets["powerplane-writers"]["spec"]["replicas"] >= 2
    # The scale-out directory replaces the single controller, never runs beside it.
    assert not [d for d in _docs(SCALEOUT) if d["kind"] == "Deployment"]
    namespaces = {d["metadata"]["name"] for d in _docs(K8S) if d["kind"] == "Namespace"}
    for d in _docs(SCALEOUT):
        assert d["metadata"]["namespace"] in namespaces
    for d in _docs(SCALEOUT):
        if d["kind"] in ("StatefulSet", "PodDisruptionBudget", "Service"):
            sel = d["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            assert any(sel.items() <= s["spec"]["template"]["metadata"]["labels"].items() for s in sets.values())


def test_k8s_scaleout_commands_parse_and_cross_reference() -> None:
    sets = _sets()
    secrets = {d["metadata"]["name"]: d["stringData"] for d in _docs(SCALEOUT) if d["kind"] == "Secret"}
    config = {k for d in _docs(K8S) if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    parser = build_parser()
    accounts: dict[str, list[str]] = {}
    for name, d in sets.items():
        spec = d["spec"]
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, f"{name}: {m['name']}"
            env = {e["name"] for e in c.get("env", [])} | config
            words = c.get("args", []) + c.get("command", [])
            for var in re.findall(r"\$\((\w+)\)", " ".join(words)):
                assert var in env, f"{name}: $({var}) is not defined"
        for v in volumes.values():
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets and v["secret"]["defaultMode"] == 0o400
        if name == "powerplane-etcd":
            continue
        (c,) = pod["containers"]
        pods = [f"{name}-{i}" for i in range(spec["replicas"])]
        envs = [{"POD_NAME": p, "POD_INDEX": str(i), "MQTT_HOST": "mosquitto", "MQTT_PORT": "1883"}
                for i, p in enumerate(pods)]
        argvs = [parser.parse_args(_expand(c["args"], e)) for e in envs]
        users = [MqttAddress.parse(a.publish if a.command == "collect" else a.mqtt).username for a in argvs]
        assert users == pods  # the account is the pod's stable name
        accounts[argvs[0].command] = pods
        (secret_vol,) = [v for v in volumes.values() if "secret" in v]
        keys = secrets[secret_vol["secret"]["secretName"]]
        for p in pods:
            assert f"{p}.password" in keys, f"{name}: no password for {p}"
        if argvs[0].command == "collect":
            shards = [parse_shard(a.shard) for a in argvs]
            assert [s.index for s in shards] == list(range(spec["replicas"]))
            assert {s.count for s in shards} == {spec["replicas"]}, "--shard must name the replica count"
            pod_index = next(e for e in c["env"] if e["name"] == "POD_INDEX")
            assert pod_index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
        if argvs[0].command == "controller":
            etcd = sets["powerplane-etcd"]
            svc = next(s for s in _docs(SCALEOUT) if s["kind"] == "Service" and s["metadata"]["name"] ==
                       "powerplane-etcd")
            for a in argvs:
                assert parse_endpoints(a.authority) == [("http", f"powerplane-etcd.{etcd['metadata']['namespace']}.svc",
                                                         svc["spec"]["ports"][0]["port"])]
                assert a.no_store_readings and a.readings and a.controller_id in pods
            aff = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
            assert aff["topologyKey"] == "kubernetes.io/hostname"
            assert "site.key" in keys and "influx-token" in keys
        if argvs[0].command == "store-writer":
            assert [a.writer_id for a in argvs] == pods
            assert "influx-token" in keys and "spool" in {t["metadata"]["name"] for t in
                                                          spec["volumeClaimTemplates"]}
    # The ACL the secret example tells operators to generate accepts exactly these accounts.
    text = acl_text(load_site(DEMO_SITE), Accounts(controllers=tuple(accounts["controller"]),
                                                   collectors=tuple(accounts["collect"]),
                                                   writers=tuple(accounts["store-writer"])), agents="node")
    for a in (*accounts["controller"], *accounts["collect"], *accounts["store-writer"]):
        assert f"\nuser {a}\n" in text
    example = (SCALEOUT / "secret.example.yaml").read_text()
    for role, flag in (("controller", "--controllers"), ("collect", "--collectors"), ("store-writer", "--writers")):
        assert f"{flag} {','.join(accounts[role])}" in example


def test_k8s_etcd_members_name_each_other() -> None:
    etcd = _sets()["powerplane-etcd"]
    (c,) = etcd["spec"]["template"]["spec"]["containers"]
    cluster = option(c["command"], "--initial-cluster").split(",")
    peers = etcd["spec"]["serviceName"]
    ns = etcd["metadata"]["namespace"]
    assert cluster == [f"powerplane-etcd-{i}=http://powerplane-etcd-{i}.{peers}.{ns}.svc:2380"
                       for i in range(etcd["spec"]["replicas"])]
    assert option(c["command"], "--name") == "$(POD_NAME)"
    headless = next(d for d in _docs(SCALEOUT) if d["kind"] == "Service" and d["metadata"]["name"] == peers)
    assert headless["spec"]["clusterIP"] == "None"
