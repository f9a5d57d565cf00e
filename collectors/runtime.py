"""The collector runtime: one asyncio task per polled device, one intake per MQTT device.

Every device keeps its own cadence (interval + jitter, slots kept, missed slots skipped);
readings are stamped when the request is sent; a device that fails is backed off
(capped exponential) and reported — first failure at ERROR, repeats at DEBUG, recovery at
INFO, ``device_down`` / ``device_up`` events — while the others keep their cadence.
Partial results are kept. Every batch is validated (collectors/validate.py) before
``on_batch`` sees it, and rejected values are counted per device and reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from collectors.base import DeviceConfig, Poller
from collectors.health import DeviceHealth, HealthTracker, Transition, health_batch
from collectors.schedule import Jitter, next_slot_ns
from collectors.validate import Validator, rejected_total
from models.clock import NS_PER_S, Clock
from models.errors import DecodeError, DeviceError
from models.events import Event, EventKind
from models.grid import DemandResponseEvent
from models.readings import REGISTRY, ReadingBatch, Reason, SeriesRegistry
from models.retry import Backoff

log = logging.getLogger("powerplane.collectors")
STOP_TIMEOUT_S = 5.0


class CollectorSet:
    """Collects a set of devices until stopped; see the module docstring for the guarantees."""

    def __init__(self, devices: Sequence[DeviceConfig], *, clock: Clock, registry: SeriesRegistry = REGISTRY,
                 on_batch: Callable[[ReadingBatch], None],
                 on_event: Callable[[Event], None] | None = None,
                 on_dr_event: Callable[[DemandResponseEvent], None] | None = None,
                 backoff: Backoff | None = None, stuck_polls: Mapping[str, int] | None = None) -> None:
        names = [d.name for d in devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate device names: {', '.join(sorted(dup))}")
        self.devices = list(devices)
        self.clock = clock
        self.registry = registry
        self.on_batch = on_batch
        self.on_event = on_event
        self.on_dr_event = on_dr_event
        self.backoff = backoff if backoff is not None else Backoff()
        self.validator = Validator(registry, stuck_polls=stuck_polls)
        self.tracker = HealthTracker(self.devices)
        self.pollers: dict[str, Poller] = {}
        self.intakes: dict[str, object] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # pymodbus turns a cancellation inside a request into its own exception, so a cancel
        # alone can be lost: every poll loop also checks this flag.
        self._stopping = False
        self._partial_logged: set[str] = set()

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Build every poller / intake (configuration errors raise here) and start collecting."""
        from collectors.registry import make_poller

        mqtt_devices = [d for d in self.devices if d.protocol == "mqtt"]
        for d in self.devices:
            if d.protocol != "mqtt":
                self.pollers[d.name] = make_poller(d, self.registry)
        for d in mqtt_devices:
            await self._start_intake(d)
        loop = asyncio.get_running_loop()
        for name, p in self.pollers.items():
            self._tasks.append(loop.create_task(self._run(p), name=f"poll-{name}"))

    async def stop(self) -> None:
        """Stop polling and close every connection."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # bounded: a poller wedged in a library call must not keep the process from stopping
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            for t in pending:
                log.error("%s did not stop within %.0f s; abandoned", t.get_name(), STOP_TIMEOUT_S)
        self._tasks.clear()
        for name, p in self.pollers.items():
            try:
                await asyncio.wait_for(p.close(), STOP_TIMEOUT_S)
            except Exception as exc:
                log.warning("%s: close failed: %r", name, exc)
        for name, intake in self.intakes.items():
            try:
                await asyncio.wait_for(intake.stop(), 2 * STOP_TIMEOUT_S)  # type: ignore[attr-defined]
            except Exception as exc:
                log.warning("%s: stop failed: %r", name, exc)

    def health(self) -> list[DeviceHealth]:
        """Health of every device."""
        return self.tracker.all()

    def health_batch(self, ts_ns: int, site: str) -> ReadingBatch:
        """Device health as ``collector.*`` readings."""
        return health_batch(self.tracker.all(), ts_ns, site, self.registry)

    # ---- polling -----------------------------------------------------------------------
    async def _run(self, poller: Poller) -> None:
        d = poller.device
        interval_ns = max(1, int(d.interval_s * NS_PER_S))
        jitter = Jitter(d.name, d.jitter_s)
        due = self.clock.now_ns()
        while not self._stopping:
            wait_ns = due + jitter.offset_ns() - self.clock.now_ns()
            if wait_ns > 0:
                await self.clock.sleep(wait_ns / NS_PER_S)
            ts = self.clock.now_ns()
            ok = await self.poll_once(poller, ts)
            if self._stopping:
                return
            now = self.clock.now_ns()
            if ok:
                due, missed = next_slot_ns(due, interval_ns, now)
                self.tracker.by_name[d.name].skipped_slots += missed
            else:
                failures = self.tracker.by_name[d.name].consecutive_failures
                due = now + int(self.backoff.delay_s(failures, floor_s=d.interval_s) * NS_PER_S)

    async def poll_once(self, poller: Poller, ts_ns: int) -> bool:
        """Poll one device once, validate and deliver; True if anything was read."""
        d = poller.device
        t0 = time.perf_counter()
        try:
            await poller.prepare()
            ts_ns = max(ts_ns, self.clock.now_ns())  # after connecting and discovering, not before
            result = await poller.poll(ts_ns)
        except DeviceError as exc:
            if self._stopping:  # the stop interrupted this request: not the device's fault
                return False
            self._failed(d, ts_ns, time.perf_counter() - t0, exc.reason, str(exc))
            return False
        except Exception as exc:  # a poller bug must not end this device's collection
            log.exception("%s: poll failed unexpectedly", d.name)
            self._failed(d, ts_ns, time.perf_counter() - t0, "internal", f"{d.name}: {type(exc).__name__}: {exc}")
            return False
        latency_s = time.perf_counter() - t0
        # Stamped at the middle of the exchange, not when it was sent: a first poll that opens
        # the connection takes seconds of site time, and an energy register read then but
        # stamped at the start would be off by that much energy.
        mid_ns = ts_ns + max(0, self.clock.now_ns() - ts_ns) // 2
        if mid_ns != ts_ns and len(result.batch):
            b = result.batch
            result.batch = dataclasses.replace(b, ts_ns=np.where(b.ts_ns == ts_ns, mid_ns, b.ts_ns))
        ts_ns = mid_ns
        if not len(result.batch) and not result.errors and set(result.rejected) <= {Reason.ABSENT}:
            self.tracker.by_name[d.name].rejected.update(result.rejected)
            # It answered, but with none of its profile's metrics (a Raritan PX1 polled as a
            # PDU2): not up, whatever the transport says.
            self._failed(d, ts_ns, latency_s, "no_data",
                         f"{d.name}: answered with none of the {d.profile} profile's metrics (wrong profile?)")
            return False
        good, counts = self.validator.check(result.batch, ts_ns)
        counts.update(result.rejected)
        if result.errors:
            key = d.name
            text = "; ".join(str(e) for e in result.errors)
            if key not in self._partial_logged:
                self._partial_logged.add(key)
                log.warning("%s: partial poll: %s", d.name, text)
            else:
                log.debug("%s: partial poll: %s", d.name, text)
        else:
            self._partial_logged.discard(d.name)
        if rejected_total(counts):
            log.debug("%s: rejected %s", d.name, {r.name: n for r, n in counts.items()})
        tr = self.tracker.success(d.name, ts_ns, latency_s, len(good), counts, len(result.errors))
        if tr is Transition.UP:
            self._up(d, ts_ns)
        self._deliver(good)
        return True

    def _deliver(self, batch: ReadingBatch) -> None:
        if not len(batch):
            return
        try:
            self.on_batch(batch)
        except Exception:  # the consumer's bug must not stop collection
            log.exception("on_batch raised; collection continues")

    def _failed(self, d: DeviceConfig, ts_ns: int, latency_s: float, kind: str, message: str) -> None:
        tr = self.tracker.failure(d.name, ts_ns, latency_s, kind, message)
        h = self.tracker.by_name[d.name]
        if tr is Transition.DOWN:
            log.error("%s: device down (%s): %s", d.name, kind, message)
            self._event(Event(ts_ns, EventKind.DEVICE_DOWN, "error", f"collector/{d.name}", message, d.name,
                              {"consecutive_failures": float(h.consecutive_failures)}))
        else:
            log.debug("%s: still down (%d failures): %s", d.name, h.consecutive_failures, message)

    def _up(self, d: DeviceConfig, ts_ns: int) -> None:
        log.info("%s: device back", d.name)
        self._event(Event(ts_ns, EventKind.DEVICE_UP, "info", f"collector/{d.name}", f"{d.name}: collecting again",
                          d.name))

    def _event(self, ev: Event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("on_event raised; collection continues")

    # ---- MQTT --------------------------------------------------------------------------
    async def _start_intake(self, d: DeviceConfig) -> None:
        from collectors.mqtt.client import Message, MqttIntake
        from collectors.mqtt.parse import MessageParser, Parsed
        from collectors.mqtt.profile import MqttProfile
        from collectors.profiles import find_profile
        from models.errors import ConfigError

        profile = find_profile(d.profile, "mqtt")
        if not isinstance(profile, MqttProfile):
            raise ConfigError(d.name, [("profile", f"{d.profile} is not an MQTT profile")])
        parser = MessageParser(profile, d, self.registry)
        bad_logged = [False]
        ts_logged = [False]

        def on_messages(msgs: list[Message]) -> None:
            t0 = time.perf_counter()
            out = Parsed()
            h = self.tracker.by_name[d.name]
            for topic, payload, arrived_ns in msgs:
                n = len(out.series)
                try:
                    parser.parse_into(out, topic, payload, arrived_ns)
                except Exception as exc:  # DecodeError, or a parser bug: either way it costs this message only
                    del out.series[n:], out.values[n:], out.ts_ns[n:], out.quality[n:]
                    h.messages_bad += 1
                    out.rejected[Reason.DECODE] += 1
                    what = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
                    if not bad_logged[0]:
                        bad_logged[0] = True
                        log.warning("%s: malformed message skipped (%s); further ones are logged at DEBUG",
                                    d.name, what[:300])
                    else:
                        log.debug("%s: malformed message skipped: %s", d.name, what[:300])
            if out.bad_items:
                log.debug("%s: %d malformed line-protocol lines skipped", d.name, out.bad_items)
            if out.timestamp_note:
                if not ts_logged[0]:
                    ts_logged[0] = True
                    log.warning("%s: readings rejected for their timestamp (%s); further ones are logged at DEBUG",
                                d.name, out.timestamp_note)
                else:
                    log.debug("%s: timestamp rejected: %s", d.name, out.timestamp_note)
            for ev in out.dr_events:
                if self.on_dr_event is not None:
                    try:
                        self.on_dr_event(ev)
                    except Exception:
                        log.exception("on_dr_event raised; intake continues")
            rejected = out.rejected
            batch = ReadingBatch(np.array(out.ts_ns, np.int64), np.array(out.series, np.int32),
                                 np.array(out.values, np.float64), np.array(out.quality, np.uint8), self.registry)
            good, counts = self.validator.check(batch, msgs[-1][2])
            counts.update(rejected)
            tr = self.tracker.success(d.name, msgs[-1][2], time.perf_counter() - t0, len(good), counts)
            if tr is Transition.UP:
                self._up(d, msgs[-1][2])
            self._deliver(good)

        def on_state(connected: bool, detail: str) -> None:
            now = self.clock.now_ns()
            h = self.tracker.by_name[d.name]
            if connected:
                if h.consecutive_failures:
                    h.consecutive_failures = 0
                    self._up(d, now)
                h.up = True
                log.info("%s: connected to %s:%d (%s)", d.name, d.host, d.port, detail)
            else:
                self._failed(d, now, 0.0, "unreachable", f"{d.name}: broker {d.host}:{d.port}: {detail}")

        intake = MqttIntake(d, profile, clock=self.clock, on_messages=on_messages, on_state=on_state)
        self.intakes[d.name] = intake
        await intake.start()
