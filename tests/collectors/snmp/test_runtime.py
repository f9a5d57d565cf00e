"""SNMP devices under the collector runtime: a dead agent is backed off, the twin's PDUs keep cadence."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest

from collectors.base import DeviceConfig
from collectors.config import devices_from_twin
from collectors.runtime import CollectorSet
from models.readings import ReadingBatch, Reason, SeriesRegistry
from models.retry import Backoff
from models.site import SiteConfig
from models.topology import Topology
from tests.collectors.conftest import StepClock, started_twin

pytestmark = pytest.mark.servers
S = 1_000_000_000


def test_dead_snmp_agent_backs_off_while_the_twin_pdus_keep_cadence(demo_site: SiteConfig,
                                                                      demo_topo: Topology) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a UDP port nobody answers on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]

    async def body() -> None:
        twin = await started_twin(demo_site, StepClock(), demo_topo)
        clock = StepClock()
        try:
            site = demo_site.site.name
            live = [replace(d, timeout_s=1.0) for d in devices_from_twin(twin.endpoints(), site, topo=demo_topo)
                    if d.protocol == "snmp"]
            dead = DeviceConfig(name="pdu-dead", protocol="snmp", profile="apc-rpdu2", host="127.0.0.1",
                                port=dead_port, timeout_s=0.2, tags=(("site", site), ("level", "pdu"), ("id", "x")),
                                options={"community": "pdu-dead"})
            devs = [*live, dead]
            reg = SeriesRegistry()
            batches: list[ReadingBatch] = []
            cs = CollectorSet(devs, clock=clock, registry=reg, on_batch=batches.append,
                              backoff=Backoff(1.0, 2.0, 60.0))
            t0 = clock.now_ns()
            await cs.start()
            await clock.run_until(t0 + 5 * S, n_waiters=len(devs))
            health = {h.device: h for h in cs.health()}
            await cs.stop()
            assert health["pdu-dead"].polls == 3  # t = 0, 1, 3: backed off 1, then 2 s (next: 7)
            assert health["pdu-dead"].last_error_kind == "timeout" and not health["pdu-dead"].up
            for d in live:
                assert health[d.name].polls == 6 and health[d.name].up, d.name  # every slot t = 0..5
                assert health[d.name].consecutive_failures == 0
            stamps = {int(t) for b in batches for t in set(b.ts_ns.tolist())}
            assert stamps == {t0 + k * S for k in range(6)}  # stamped when sent, on the slot
        finally:
            await twin.stop()

    asyncio.run(body())


def test_a_device_that_answers_with_none_of_its_profiles_metrics_is_not_up(demo_site: SiteConfig,
                                                                          demo_topo: Topology) -> None:
    """An APC PDU polled with the Raritan PDU2 profile answers every request (noSuchObject) and
    yields nothing: that is ``no_data``, a device down with an event, not an idle device up."""
    async def body() -> None:
        twin = await started_twin(demo_site, StepClock(), demo_topo)
        clock = StepClock()
        try:
            site = demo_site.site.name
            apc = next(d for d in devices_from_twin(twin.endpoints(), site, topo=demo_topo)
                       if d.protocol == "snmp" and d.profile == "apc-rpdu2")
            wrong = replace(apc, name="wrong-profile", profile="raritan-pdu2", timeout_s=1.0)
            events: list[object] = []
            cs = CollectorSet([wrong, replace(apc, timeout_s=1.0)], clock=clock, registry=SeriesRegistry(),
                              on_batch=lambda b: None, on_event=events.append, backoff=Backoff(1.0, 2.0, 60.0))
            t0 = clock.now_ns()
            await cs.start()
            await clock.run_until(t0 + 2 * S, n_waiters=2)
            health = {h.device: h for h in cs.health()}
            await cs.stop()
            bad = health["wrong-profile"]
            assert not bad.up and bad.last_error_kind == "no_data" and "raritan-pdu2" in bad.last_error
            assert bad.rejected[Reason.ABSENT] > 0, bad.rejected  # the columns it lacks, counted
            assert health[apc.name].up and health[apc.name].readings > 0
            assert [(e.kind, e.entity) for e in events] == [("device_down", "wrong-profile")]  # type: ignore[attr-defined]
        finally:
            await twin.stop()

    asyncio.run(body())
