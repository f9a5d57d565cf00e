"""``powerplane acl``: who may publish what, as text (the broker's behaviour is drilled in tests/security)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import ConfigError
from models.site import SiteConfig, load_site
from powerplane.cli import main
from powerplane.commands.acl import Accounts, acl_text
from tests.conftest import DEMO_SITE

BASE = "powerplane/demo-hall"


def blocks(text: str) -> dict[str, list[str]]:
    """``user`` -> its ``topic`` lines; lines before the first user (anonymous) under ""."""
    out: dict[str, list[str]] = {"": []}
    cur = ""
    for ln in text.splitlines():
        if ln.startswith("user "):
            cur = ln.split(" ", 1)[1]
            assert cur not in out, f"two blocks for {cur}"
            out[cur] = []
        elif ln and not ln.startswith("#"):
            out[cur].append(ln)
    return out


def writes(lines: list[str]) -> list[str]:
    return [ln.split(" ", 2)[2] for ln in lines if ln.startswith(("topic write ", "topic readwrite "))]


def reads(lines: list[str]) -> list[str]:
    return [ln.split(" ", 2)[2] for ln in lines if ln.startswith(("topic read ", "topic readwrite "))]


def test_rack_mode_grants_each_account_only_its_own_topics(demo_site: SiteConfig) -> None:
    b = blocks(acl_text(demo_site, Accounts(collectors=("collector-0", "collector-1"),
                                            mqtt_collectors=("collector-1", "grid-in"))))
    assert b.pop("") == []  # nothing for anonymous clients
    assert not any(ln.startswith("pattern") for lines in b.values() for ln in lines)
    racks = [r.id for r in demo_site.racks]
    for r in racks:
        assert b.pop(r) == [f"topic read {BASE}/caps/{r}", f"topic write {BASE}/status/{r}"]
    assert b.pop("controller") == [
        f"topic read {BASE}/status/+", f"topic read {BASE}/readings/+", "topic read grid/demo-hall/#",
        "topic read BMS/v1/PUB/Value/#", f"topic write {BASE}/caps/+", f"topic write {BASE}/events/+",
        f"topic write {BASE}/controller/state"]
    assert b.pop("collector-0") == [f"topic write {BASE}/readings/collector-0"]
    assert b.pop("collector-1") == ["topic read grid/demo-hall/#", "topic read BMS/v1/PUB/Value/#",
                                    f"topic write {BASE}/readings/collector-1"]
    assert b.pop("grid-in") == ["topic read grid/demo-hall/#", "topic read BMS/v1/PUB/Value/#"]
    assert b.pop("operator") == ["topic read #"]
    assert b == {}


def test_node_mode_accounts_read_their_racks_command_and_write_their_own_status(demo_site: SiteConfig) -> None:
    b = blocks(acl_text(demo_site, agents="node"))
    nodes = [u for u in b if "@" in u]
    assert len(nodes) == 8 * 144
    assert b["r05@node-143"] == [f"topic read {BASE}/caps/r05", f"topic write {BASE}/status/r05@node-143"]
    assert "r05" not in b  # no rack accounts in node mode
    # No account but the controller writes a caps topic, and statuses are written only by their owner.
    for user, lines in b.items():
        for t in writes(lines):
            assert "/caps/" not in t or user == "controller"
            if "/status/" in t:
                assert t == f"{BASE}/status/{user}"


def test_twin_grants_are_demo_only_and_for_agents(demo_site: SiteConfig) -> None:
    text = acl_text(demo_site, twin=True)
    assert "demo only" in text
    b = blocks(text)
    assert "topic write twin/demo-hall/gpu/set" in b["r01"] and "topic read twin/demo-hall/gpu/state/#" in b["r01"]
    assert not any("twin/" in t for t in writes(b["controller"]) + writes(b["operator"]))
    assert "twin/" not in acl_text(demo_site)


def test_operators_and_collectors_write_nothing_but_their_batches(demo_site: SiteConfig) -> None:
    b = blocks(acl_text(demo_site, Accounts(operators=("operator", "noc"), mqtt_collectors=("bms-in",))))
    for user in ("operator", "noc", "bms-in"):
        assert writes(b[user]) == [], user
    assert reads(b["noc"]) == ["#"]


def test_scaled_out_accounts_controllers_and_writers(demo_site: SiteConfig) -> None:
    b = blocks(acl_text(demo_site, Accounts(controllers=("controller-a", "controller-b"),
                                            collectors=("collector-0", "collector-1", "collector-2"),
                                            writers=("writer-0", "writer-1"))))
    # Every controller has its own account (the client id is the user name: one account, one connection).
    assert b["controller-a"] == b["controller-b"] and f"topic write {BASE}/caps/+" in b["controller-a"]
    for w in ("writer-0", "writer-1"):
        assert b[w] == [f"topic read {BASE}/readings/+"]  # through $share/<group>/...; writes nothing
    for c in ("collector-0", "collector-1", "collector-2"):
        assert writes(b[c]) == [f"{BASE}/readings/{c}"]
    with pytest.raises(ConfigError, match="already --collectors"):
        acl_text(demo_site, Accounts(writers=("collector-0",)))


@pytest.mark.parametrize("accounts, problem", [
    (Accounts(controllers=("r01",)), "already an agent"),
    (Accounts(collectors=("controller",)), "already --controllers"),
    (Accounts(operators=("ops/1",)), "not an account name"),
    (Accounts(operators=("#",)), "not an account name"),
    (Accounts(mqtt_collectors=("operator",)), "already --operators"),
])
def test_bad_or_colliding_account_names_are_refused(demo_site: SiteConfig, accounts: Accounts, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        acl_text(demo_site, accounts)


def test_cli_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "acl"
    assert main(["acl", "--site", str(DEMO_SITE), "--agents", "node", "--collectors", "c0,c1", "--out", str(out)]) == 0
    assert out.read_text() == acl_text(load_site(DEMO_SITE), Accounts(collectors=("c0", "c1")), agents="node")
    assert "1156 accounts" in capsys.readouterr().out
    assert main(["acl", "--site", str(DEMO_SITE), "--controllers", "r01"]) == 2
    assert "one account, one role" in capsys.readouterr().err
