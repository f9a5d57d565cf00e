"""The runtime against the twin's real Modbus servers: cadence, isolation, back-off, health."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import pytest

from collectors.config import devices_from_twin
from collectors.health import health_batch
from collectors.runtime import CollectorSet
from collectors.schedule import Jitter, next_slot_ns
from models.events import Event
from models.readings import ReadingBatch, SeriesRegistry
from models.retry import Backoff
from models.site import SiteConfig
from models.topology import Topology
from tests.collectors.conftest import StepClock, started_twin

# real servers: a hang fails fast, with pytest-timeout's stack dump, instead of after 300 s
pytestmark = pytest.mark.timeout(120)

S = 1_000_000_000


def test_backoff_slots_and_jitter() -> None:
    b = Backoff(base_s=1.0, factor=2.0, max_s=30.0)
    assert [b.delay_s(n, floor_s=1.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.delay_s(1, floor_s=5.0) == 5.0  # never sooner than the interval
    assert next_slot_ns(10, 10, 15) == (20, 0)
    assert next_slot_ns(10, 10, 45) == (50, 3)  # a poll due at 10 overran to 45: 20, 30, 40 skipped
    assert next_slot_ns(10, 10, 20) == (20, 0)
    j1, j2 = Jitter("a", 0.5), Jitter("a", 0.5)
    offs = [j1.offset_ns() for _ in range(50)]
    assert offs == [j2.offset_ns() for _ in range(50)] and all(0 <= o < S // 2 for o in offs)
    assert Jitter("a", 0.0).offset_ns() == 0


def test_dead_and_slow_devices_cost_the_others_nothing(demo_site: SiteConfig, demo_topo: Topology,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        twin = await started_twin(demo_site, StepClock(), demo_topo)  # the twin's own clock is unused here
        clock = StepClock()
        try:
            site = demo_site.site.name
            devs = [replace(d, timeout_s=0.2) for d in devices_from_twin(twin.endpoints(), site, topo=demo_topo)
                    if d.protocol == "modbus"]
            names = [d.name for d in devs]
            dead, slow = "cdu-2", "meter-hall-a"
            await twin.modbus[dead].stop()
            twin.modbus[slow].faults.delay_s = 0.5  # beyond its 0.2 s timeout
            reg = SeriesRegistry()
            batches: list[ReadingBatch] = []
            events: list[Event] = []
            cs = CollectorSet(devs, clock=clock, registry=reg, on_batch=batches.append, on_event=events.append,
                              backoff=Backoff(1.0, 2.0, 60.0))
            t0 = clock.now_ns()
            with caplog.at_level(logging.DEBUG, logger="powerplane.collectors"):
                await cs.start()
                await clock.run_until(t0 + 10 * S, n_waiters=len(devs))
                health = {h.device: h for h in cs.health()}
                for n in names:
                    if n in (dead, slow):
                        assert health[n].polls == 4, n  # t = 0, 1, 3, 7 (back-off 1, 2, 4, then 8)
                        assert not health[n].up and health[n].consecutive_failures == 4
                    else:
                        assert health[n].polls == 11, n  # every slot t = 0..10
                        assert health[n].up and health[n].consecutive_failures == 0
                assert health[dead].last_error_kind in ("unreachable", "timeout")
                assert health[slow].last_error_kind == "timeout"
                # timestamps are the slot times at which each request was sent
                stamps = {int(t) for b in batches for t in np.unique(b.ts_ns)}
                assert stamps == {t0 + k * S for k in range(11)}
                # the dead device comes back: its next retry (t = 15) succeeds
                await twin.modbus[dead].start()
                twin.modbus[slow].faults.delay_s = 0.0
                await clock.run_until(t0 + 16 * S, n_waiters=len(devs))
                health = {h.device: h for h in cs.health()}
                assert health[dead].up and health[dead].polls == 6  # t = 15 then 16
                assert health[slow].up
            kinds = [(e.kind, e.entity) for e in events]
            assert kinds.count(("device_down", dead)) == 1 and kinds.count(("device_up", dead)) == 1
            assert kinds.count(("device_down", slow)) == 1
            errors = [r for r in caplog.records if r.levelno == logging.ERROR and dead in r.getMessage()]
            debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "still down" in r.getMessage()
                     and dead in r.getMessage()]
            back = [r for r in caplog.records if r.levelno == logging.INFO and f"{dead}: device back" in r.getMessage()]
            assert len(errors) == 1 and len(debug) == 3 and len(back) == 1
            hb = cs.health_batch(clock.now_ns(), site)
            up = {dict(reg.key(int(s)).tags)["device"]: v for s, v in zip(hb.series, hb.value, strict=True)
                  if reg.key(int(s)).metric == "collector.up"}
            assert up == dict.fromkeys(names, 1.0)
            await cs.stop()
        finally:
            await twin.stop()

    asyncio.run(body())


def test_health_batch_never_invents_a_last_success() -> None:
    from collectors.health import DeviceHealth

    reg = SeriesRegistry()
    b = health_batch([DeviceHealth("m1", "modbus")], 5, "s", reg)
    metrics = {reg.key(int(s)).metric for s in b.series}
    assert "collector.last_success_s" not in metrics and "collector.up" in metrics
    assert all(dict(reg.key(int(s)).tags) == {"site": "s", "device": "m1", "protocol": "modbus"} for s in b.series)


def test_rejected_values_are_counted_and_never_delivered(demo_site: SiteConfig, demo_topo: Topology) -> None:
    from models.readings import Reason

    async def body() -> None:
        twin = await started_twin(demo_site, StepClock(), demo_topo)
        clock = StepClock()
        try:
            site = demo_site.site.name
            devs = devices_from_twin(twin.endpoints(), site, topo=demo_topo)
            bus = next(d for d in devs if d.name == "busway-row-a1")
            # a rating far below what the row draws: its power (and the racks', rated alike) must be rejected
            ratings = {r: 1000.0 for r in bus.options["child_ratings_w"]}
            bus = replace(bus, rating_w=1000.0, options=MappingProxyType({**bus.options, "child_ratings_w": ratings}))
            reg = SeriesRegistry()
            batches: list[ReadingBatch] = []
            cs = CollectorSet([bus], clock=clock, registry=reg, on_batch=batches.append)
            await cs.start()
            await clock.run_until(clock.now_ns() + 2 * S, n_waiters=1)
            await cs.stop()
            h = cs.health()[0]
            assert h.rejected[Reason.ABOVE_RANGE] == 3 * 3  # row + 2 tap-offs, 3 polls
            delivered = {reg.key(int(s)).metric for b in batches for s in b.series}
            assert "power.power_w" not in delivered and "power.current_a" in delivered
            hb = cs.health_batch(clock.now_ns(), site)
            rej = [v for s, v in zip(hb.series, hb.value, strict=True)
                   if reg.key(int(s)).metric == "collector.rejected"]
            assert rej == [9.0]
        finally:
            await twin.stop()

    asyncio.run(body())
