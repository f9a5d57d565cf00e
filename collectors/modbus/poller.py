"""The Modbus poller: discovery once, then each poll executes the read plan.

Discovery finds what a profile leaves to the device: the SunSpec model (the "SunS" marker
at one of the profile's bases, then the model chain) and the size of repeated groups
(tap-offs, outlets). The plan is rebuilt only when discovery runs again, which happens
after a poll in which nothing could be read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from collectors.base import DeviceConfig, PollResult
from collectors.modbus.client import ModbusClient, is_connection_error
from collectors.modbus.decode import PlanDecoder, decode
from collectors.modbus.plan import Layout, ReadPlan, build_plan
from collectors.modbus.profile import ModbusProfile
from collectors.profiles import Profile
from models.errors import ConfigError, DeviceError, DeviceProtocolError
from models.readings import ReadingBatch, SeriesRegistry

SUNSPEC_MARKER = [0x5375, 0x6E53]  # "SunS"
SUNSPEC_END = 0xFFFF
_MAX_MODELS = 64


class ModbusPoller:
    """Polls one Modbus device according to its profile."""

    def __init__(self, device: DeviceConfig, profile: ModbusProfile, registry: SeriesRegistry,
                 client: ModbusClient | None = None) -> None:
        self.device = device
        self.profile = profile
        self.registry = registry
        self.client = client if client is not None else ModbusClient(device)
        self.slow_every = self.client.options.slow_every
        self.plan: ReadPlan | None = None
        self._decoder: PlanDecoder | None = None
        self._polls = 0
        self.info: dict[str, str] = {}

    async def _read(self, table: str, address: int, count: int) -> Sequence[int]:
        regs = await self.client.read(table, address, count)
        return [int(r) for r in regs]

    async def _sunspec_frame(self) -> int:
        spec = self.profile.sunspec
        assert spec is not None
        table = self.profile.points[0].table if self.profile.points else "holding"
        for base in spec.bases:
            try:
                marker = await self._read(table, base, 2)
            except DeviceProtocolError:
                continue  # illegal address: no map there
            if list(marker) != SUNSPEC_MARKER:
                continue
            addr = base + 2
            for _ in range(_MAX_MODELS):
                model_id, length = await self._read(table, addr, 2)
                if model_id == SUNSPEC_END:
                    break
                if model_id in spec.models:
                    self.info["sunspec_base"] = str(base)
                    self.info["sunspec_model"] = str(model_id)
                    return addr + 2
                addr += 2 + length
            raise DeviceProtocolError(self.device.name, f"SunSpec map at {base} has none of models {spec.models}")
        raise DeviceProtocolError(self.device.name, f"no SunSpec marker at {', '.join(map(str, spec.bases))}")

    async def discover(self) -> Layout:
        """Find the SunSpec frame and the group counts."""
        frame = await self._sunspec_frame() if self.profile.sunspec is not None else 0
        counts: dict[str, int] = {}
        by_name = {p.name: p for p in self.profile.points}
        for g, _ in self.profile.groups:
            if g.count_point is None:
                continue
            p = by_name[g.count_point]
            regs = await self._read(p.table, p.address + frame, p.n_regs)
            n = int(decode(regs, p.reg_type, p.order))
            if not 0 <= n <= 4096:
                raise DeviceProtocolError(self.device.name, f"{g.count_point} = {n}: not a plausible count")
            counts[g.name] = n
        return Layout(frame, counts)

    async def ensure_plan(self) -> ReadPlan:
        """The read plan, discovering the device first if needed."""
        if self.plan is None:
            layout = await self.discover()
            self.plan = build_plan(self.profile, self.device, self.registry, layout)
            self._decoder = PlanDecoder(self.plan)
        return self.plan

    async def prepare(self) -> None:
        """Connect and discover the layout (the first poll's SunSpec walk), before the stamp."""
        await self.ensure_plan()
        await self.client.connect()

    async def poll(self, ts_ns: int) -> PollResult:
        """Read every due block once; partial failures are reported in ``errors``."""
        plan = await self.ensure_plan()
        decoder = self._decoder
        assert decoder is not None
        slow = self._polls % self.slow_every == 0
        self._polls += 1
        data: dict[int, Sequence[int] | Sequence[bool]] = {}
        errors: list[DeviceError] = []
        for bi, b in enumerate(plan.blocks):
            if b.slow and not slow:
                continue
            try:
                data[bi] = await self.client.read(b.table, b.address, b.count)
            except DeviceError as exc:
                errors.append(exc)
                if is_connection_error(exc):
                    break  # the device is gone: keep what we have, do not wait out every block
        if not data:
            if self.profile.sunspec is not None or self.profile.groups:
                self.plan = None  # the device may have been replaced: discover again
            raise errors[0] if errors else DeviceProtocolError(self.device.name, "no blocks to read")
        out = decoder.decode(data)
        for i, r in out.raw.items():
            if isinstance(r, str):
                self.info[plan.fields[i].point.name] = r
        n = len(out.series)
        batch = ReadingBatch(np.full(n, ts_ns, np.int64), np.array(out.series, np.int32),
                             np.array(out.values, np.float64), np.zeros(n, np.uint8), self.registry)
        return PollResult(batch, errors, out.rejected)

    async def close(self) -> None:
        """Close the connection."""
        await self.client.close()


def make_modbus_poller(device: DeviceConfig, profile: Profile, registry: SeriesRegistry) -> ModbusPoller:
    """Poller factory for ``collectors.registry.POLLER_FACTORIES``."""
    if not isinstance(profile, ModbusProfile):
        raise ConfigError(device.name, [("profile", f"{profile.name} is a {profile.protocol} profile, not modbus")])
    return ModbusPoller(device, profile, registry)
