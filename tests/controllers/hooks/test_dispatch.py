"""The dispatcher: filtering, coalescing, fan-out to real endpoints and adapters, shutdown."""

from __future__ import annotations

import random
from pathlib import Path

from controllers.hooks.dispatch import Coalescer, HookDispatcher
from controllers.hooks.payloads import HookEvent, event_id
from controllers.hooks.receiver import WebhookReceiver
from controllers.hooks.webhook import read_dead_letter
from models.events import EV_CAP_CHANGED, EV_DR_END, EV_DR_START, EV_MOVE, Event
from models.retry import Backoff
from models.site import Hooks, Webhook
from testbed.realservers import free_port
from tests.controllers.hooks.conftest import SECRET, SigServer

S = 1_000_000_000
FAST = Backoff(base_s=0.01, max_s=0.05, jitter=0.5, rng=random.Random(2))


def ev(kind: str, t_s: float, entity: str = "job-1", value: float = 1.0, message: str = "") -> Event:
    return Event(int(t_s * S), kind, "info", "controller", message or f"{kind} {entity} at {t_s}", entity,
                 {"value": value})


def test_coalescer_leading_and_trailing_edge() -> None:
    c = Coalescer(10.0)
    first, mid, last = ev(EV_CAP_CHANGED, 0, value=500), ev(EV_CAP_CHANGED, 1, value=450), ev(EV_CAP_CHANGED, 2)
    assert c.offer(HookEvent(first), 0) == [HookEvent(first)]
    assert c.offer(HookEvent(mid), 1 * S) == [] and c.offer(HookEvent(last), 2 * S) == []
    other = HookEvent(ev(EV_CAP_CHANGED, 2, entity="job-2"))
    assert c.offer(other, 2 * S) == [other]  # per entity
    dr = HookEvent(ev(EV_DR_START, 3, entity="dr-1"))
    assert c.offer(dr, 3 * S) == [dr] and c.offer(dr, 3 * S) == [dr]  # never coalesced
    assert c.due(9 * S) == []
    assert c.due(10 * S) == [HookEvent(last)] and c.coalesced == 1
    assert c.due(30 * S) == []
    assert c.offer(HookEvent(first), 31 * S) == [HookEvent(first)]  # quiet for a window: straight through
    assert c.offer(HookEvent(mid), 32 * S) == [] and c.drain() == [HookEvent(mid)]
    assert Coalescer(0.0).offer(HookEvent(mid), 0) == [HookEvent(mid)]


def test_fan_out_to_webhooks_and_adapters(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET.decode())
    rx = WebhookReceiver(SECRET).start()
    srv = SigServer()
    lines: list[str] = []
    try:
        hooks = Hooks(webhooks=[Webhook(url=rx.url, secret_file=str(secret_file), kinds=[EV_MOVE]),
                                Webhook(url=srv.url, secret_file=str(secret_file))],
                      dead_letter=str(tmp_path / "dl.jsonl"), slurm="dry-run", kubernetes="dry-run")
        d = HookDispatcher(hooks, "demo", out=lines.append, backoff=FAST)
        d.start()
        move = ev(EV_MOVE, 0, entity="job-7", value=9000, message="move job-7 from r01 to r03")
        detail = {"action": "move", "from_racks": ["r01"], "from_nodes": ["r01/node-000", "r01/node-001"],
                  "to_racks": ["r03"], "gpus": 16}
        caps = [ev(EV_CAP_CHANGED, t, value=700 - t) for t in (0, 1, 2)]
        noise = Event(0, "device_down", "error", "collector/pdu-1", "down", "pdu-1")
        dr_end = ev(EV_DR_END, 2, entity="dr-1")
        assert d.submit([noise, move, caps[0]], details={id(move): detail}) == 2
        assert d.submit([caps[1]]) == 0
        assert d.submit([noise, caps[2], dr_end]) == 1
        d.close(timeout_s=30)
        (got,) = rx.received
        assert got["kind"] == EV_MOVE and got["detail"] == detail and got["value"] == 9000.0
        assert got["id"] == event_id("demo", move)
        assert [(p["kind"], p["ts_ns"]) for p in srv.accepted()] == [
            (EV_MOVE, 0), (EV_CAP_CHANGED, 0), (EV_DR_END, 2 * S), (EV_CAP_CHANGED, 2 * S)]
        assert all(r.signature_ok and r.fresh for r in srv.requests)
        # the Slurm and Kubernetes lanes run on their own threads: compare each one's lines
        assert [x for x in lines if x.startswith("scontrol")] == [
            "scontrol update 'nodename=node-[000-001]' state=drain "
            "'reason=powerplane: move job-7: move job-7 from r01 to r03'",
            "scontrol update 'nodename=node-[000-001]' state=resume"]
        assert [x for x in lines if x.startswith("kubectl taint")] == [
            "kubectl taint nodes node-000 powerplane.io/power=drain:NoSchedule --overwrite",
            "kubectl taint nodes node-001 powerplane.io/power=drain:NoSchedule --overwrite",
            "kubectl taint nodes node-000 powerplane.io/power-",
            "kubectl taint nodes node-001 powerplane.io/power-"]
        st = d.stats()
        assert st.hook_events == 5 and st.coalesced == 1
        assert st.sinks[f"webhook[0] {rx.url}"].delivered == 1
        assert st.sinks[f"webhook[1] {srv.url}"].delivered == 4
        assert st.sinks["slurm"].delivered == 2 and st.sinks["kubernetes"].delivered == 4
        assert all(s.queue_depth == 0 and s.dead_lettered == 0 for s in st.sinks.values())
        assert not (tmp_path / "dl.jsonl").exists()
    finally:
        rx.stop()
        srv.stop()


def test_endpoint_down_dead_letters_on_close_and_submit_does_not_wait(tmp_path: Path) -> None:
    srv = SigServer(hold=True)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    try:
        hooks = Hooks(webhooks=[Webhook(url=srv.url, max_tries=2), Webhook(url=dead, max_tries=2)],
                      dead_letter=str(tmp_path / "dl.jsonl"))
        d = HookDispatcher(hooks, "demo", secrets=[SECRET, SECRET], backoff=FAST, coalesce_window_s=0)
        d.start()
        sent = [ev(EV_MOVE, t, entity=f"job-{t}") for t in range(5)]
        for e in sent:
            d.submit([e])
        assert srv.wait_arrived(1)
        assert not srv.gate.is_set()  # every submit returned while the endpoint held the first request
        d.close(timeout_s=0.5)
        recs = list(read_dead_letter(tmp_path / "dl.jsonl"))
        by_url = {u: sorted(r["payload"]["id"] for r in recs if r["url"] == u) for u in (srv.url, dead)}
        assert by_url[dead] == sorted(event_id("demo", e) for e in sent)
        assert len(by_url[srv.url]) == 5  # held, then shut down: dead-lettered, none lost
        st = d.stats()
        assert st.sinks[f"webhook[0] {srv.url}"].dead_lettered == 5
        assert st.sinks[f"webhook[1] {dead}"].dead_lettered == 5
    finally:
        srv.stop()


def test_unknown_kind_or_missing_secret_is_a_config_error() -> None:
    import pytest

    from models.errors import ConfigError

    bad = Hooks(webhooks=[Webhook(url="http://x", kinds=["move_recomendation"])])
    with pytest.raises(ConfigError, match=r"hooks.webhooks\[0\].kinds: unknown event kinds \['move_recomendation'\]"):
        HookDispatcher(bad, "demo", secrets=[SECRET])
    with pytest.raises(ConfigError, match="no secret"):
        HookDispatcher(Hooks(webhooks=[Webhook(url="http://x")]), "demo")
