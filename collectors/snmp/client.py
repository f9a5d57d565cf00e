"""The pysnmp edge: v2c and v3 (authPriv) sessions, one GET + one column-parallel GETBULK walk per poll.

Everything protocol-specific about a poll lives in ``plan.py`` (what to ask) and
``decode.py`` (what the answers mean); this module only talks to pysnmp 7.1 and
translates its errors, once, into the DeviceError tree. Sessions are set up with
``pysnmp.hlapi.v3arch.asyncio`` (``UdpTransportTarget.create``, CommunityData/UsmUserData,
ContextData); requests skip hlapi's MIB resolution of numeric OIDs (see ``_request``):

    errorIndication requestTimedOut          -> DeviceTimeout
    host that does not resolve, socket error -> DeviceUnreachable
    any other errorIndication (unknown user, wrong digest, decryption), errorStatus
                                             -> DeviceProtocolError

SNMP engines are expensive (USM tables, dispatcher, MIB builder), so all pollers running
on one event loop share one engine, closed when the last of them closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collectors.base import DeviceConfig, PollResult
from collectors.profiles import Profile
from collectors.snmp.decode import Decoder
from collectors.snmp.plan import BulkWalk, NoValue, Raw, SnmpPlan, VarBind, build_plan
from collectors.snmp.profile import Oid, SnmpProfile
from models.configfile import validation_problems
from models.errors import (
    ConfigError,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    ProfileError,
)
from models.readings import Reason, SeriesRegistry

log = logging.getLogger("powerplane.collectors.snmp")

AUTH_PROTOCOLS = ("SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5")
PRIV_PROTOCOLS = ("AES", "AES192", "AES256", "DES", "3DES")


class SnmpOptions(BaseModel):
    """``DeviceConfig.options`` of an SNMP device (validated once, when the poller is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal["2c", "3"] = "2c"
    community: str = "public"
    user: str | None = None
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"] = "SHA"
    auth_key: str | None = Field(None, min_length=8)
    priv_protocol: Literal["AES", "AES192", "AES256", "DES", "3DES"] = "AES"
    priv_key: str | None = Field(None, min_length=8)
    context: str = ""  # v3 context name (snmpsim and the twin select a device by it)
    max_repetitions: int | None = Field(None, ge=1, le=1000)  # lower it for agents that choke
    max_get: int = Field(60, ge=1, le=1000)  # varbinds per GET
    retries: int = Field(0, ge=0, le=10)  # the runtime polls again next interval anyway
    # requests in flight to one agent endpoint (host:port), shared by every device behind it
    # (snmpsim, proxies, the twin): beyond this they queue here instead of overflowing the
    # agent's socket, where they would be dropped and time out
    max_inflight: int = Field(16, ge=1, le=1000)

    @model_validator(mode="after")
    def _v3_needs_user(self) -> SnmpOptions:
        if self.version == "3" and not self.user:
            raise ValueError("version 3 needs user (and auth_key/priv_key for authPriv)")
        if self.priv_key and not self.auth_key:
            raise ValueError("priv_key needs auth_key (SNMPv3 has no privacy without authentication)")
        return self

    @classmethod
    def of(cls, device: DeviceConfig) -> SnmpOptions:
        """Validate ``device.options``; problems become a ConfigError naming ``options.KEY``."""
        try:
            return cls.model_validate(dict(device.options))
        except ValidationError as exc:
            problems = [(f"options.{k}" if k else "options", m) for k, m in validation_problems(exc)]
            raise ConfigError(device.name, problems) from None


# ---- shared engines --------------------------------------------------------------------------

@dataclass
class _EngineSlot:
    engine: Any
    users: int
    opening: int = 0  # pollers between "resolve the agent" and "registered with the engine"
    settled: asyncio.Event | None = None  # set when ``opening`` drops back to 0


_ENGINES: dict[asyncio.AbstractEventLoop, _EngineSlot] = {}


def acquire_engine() -> Any:
    """The SnmpEngine of the running event loop (created on first use)."""
    from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

    loop = asyncio.get_running_loop()
    slot = _ENGINES.get(loop)
    if slot is None:
        for old in [k for k in _ENGINES if k.is_closed()]:  # a loop that ended without closing its pollers
            del _ENGINES[old]
        slot = _ENGINES[loop] = _EngineSlot(SnmpEngine(), 0)
    slot.users += 1
    return slot.engine


def _slot(engine: Any) -> _EngineSlot | None:
    return next((s for s in _ENGINES.values() if s.engine is engine), None)


# How long a poller's first request waits for the others being set up at the same time.
OPEN_SETTLE_S = 0.5


def release_engine(engine: Any) -> None:
    """Drop one user of ``engine``; the last one closes its dispatcher (sockets)."""
    for loop, slot in list(_ENGINES.items()):
        if slot.engine is engine:
            slot.users -= 1
            if slot.users <= 0:
                del _ENGINES[loop]
                engine.close_dispatcher()
            return


_LIMITS: dict[tuple[asyncio.AbstractEventLoop, str, int], asyncio.Semaphore] = {}


def endpoint_limit(host: str, port: int, n: int) -> asyncio.Semaphore:
    """The in-flight request limit of agent ``host:port`` on the running loop (first ``n`` wins)."""
    key = (asyncio.get_running_loop(), host, port)
    sem = _LIMITS.get(key)
    if sem is None:
        for k in [k for k in _LIMITS if k[0].is_closed()]:
            del _LIMITS[k]
        sem = _LIMITS[key] = asyncio.Semaphore(n)
    return sem


# ---- values and errors ---------------------------------------------------------------------------

def to_raw(value: Any) -> Raw:
    """A pysnmp value -> what the decoder takes (int, bytes or NoValue)."""
    from pysnmp.proto import rfc1902, rfc1905

    if isinstance(value, rfc1905.NoSuchInstance):
        return NoValue.NO_SUCH_INSTANCE
    if isinstance(value, rfc1905.NoSuchObject):
        return NoValue.NO_SUCH_OBJECT
    if isinstance(value, rfc1905.EndOfMibView):
        return NoValue.END_OF_MIB_VIEW
    if isinstance(value, rfc1902.OctetString | rfc1902.IpAddress):
        return bytes(value.asOctets())
    if isinstance(value, rfc1902.ObjectIdentifier):
        return b""
    try:
        return int(value)
    except (TypeError, ValueError):
        return b""


def translate(device: str, what: str, error_indication: Any, error_status: Any, error_index: Any,
              sent: Sequence[Oid]) -> DeviceError | None:
    """pysnmp's (errorIndication, errorStatus, errorIndex) -> one DeviceError, or None if fine."""
    from pysnmp.proto import errind

    if error_indication:
        if isinstance(error_indication, errind.RequestTimedOut):
            return DeviceTimeout(device, f"{what}: no response")
        return DeviceProtocolError(device, f"{what}: {error_indication}")
    if error_status and int(error_status):
        i = int(error_index or 0) - 1
        at = f" at {'.'.join(map(str, sent[i]))}" if 0 <= i < len(sent) else ""
        return DeviceProtocolError(device, f"{what}: {error_status.prettyPrint()}{at}")
    return None


@dataclass
class _Session:
    auth: Any
    target: Any
    context: Any
    limit: asyncio.Semaphore


class SnmpPoller:
    """Polls one SNMP device with its plan: one GET for the scalars, one bulk walk for the tables."""

    def __init__(self, device: DeviceConfig, profile: SnmpProfile, registry: SeriesRegistry,
                 engine: Any = None) -> None:
        self.device = device
        self.options = SnmpOptions.of(device)
        self.plan: SnmpPlan = build_plan(profile, device, registry, self.options.max_repetitions)
        self.decoder = Decoder(self.plan)
        self.requests = 0
        self.varbinds = 0
        self._engine = engine
        self._own_engine = engine is None
        self._session: _Session | None = None
        self._digits_ts_ns: int | None = None

    # -- session -----------------------------------------------------------------------------
    async def _open(self) -> _Session:
        from pysnmp.hlapi.v3arch import asyncio as hl
        from pysnmp.hlapi.v3arch.asyncio.cmdgen import LCD

        if self._session is not None:
            return self._session
        o = self.options
        if o.version == "3":
            auth_proto = {"SHA": hl.USM_AUTH_HMAC96_SHA, "SHA224": hl.USM_AUTH_HMAC128_SHA224,
                          "SHA256": hl.USM_AUTH_HMAC192_SHA256, "SHA384": hl.USM_AUTH_HMAC256_SHA384,
                          "SHA512": hl.USM_AUTH_HMAC384_SHA512, "MD5": hl.USM_AUTH_HMAC96_MD5}[o.auth_protocol]
            priv_proto = {"AES": hl.USM_PRIV_CFB128_AES, "AES192": hl.USM_PRIV_CFB192_AES,
                          "AES256": hl.USM_PRIV_CFB256_AES, "DES": hl.USM_PRIV_CBC56_DES,
                          "3DES": hl.USM_PRIV_CBC168_3DES}[o.priv_protocol]
            auth: Any = hl.UsmUserData(
                o.user, authKey=o.auth_key, privKey=o.priv_key,
                authProtocol=auth_proto if o.auth_key else hl.USM_AUTH_NONE,
                privProtocol=priv_proto if o.priv_key else hl.USM_PRIV_NONE)
        else:
            auth = hl.CommunityData(o.community, mpModel=1)
        if self._engine is None:
            self._engine = acquire_engine()
        # Every v2c community / v3 user configured on an engine makes pysnmp rebuild its
        # community and target maps at the next message. Pollers starting together (a
        # CollectorSet's first round) therefore register first and send after, so 500 devices
        # cost one rebuild, not one per device (bench/snmp.py, 500 PDUs: first round 26-37 s -> 10 s).
        slot = _slot(self._engine)
        if slot is not None:
            if slot.opening == 0:
                slot.settled = asyncio.Event()
            slot.opening += 1
        try:
            try:
                target = await hl.UdpTransportTarget.create((self.device.host, self.device.port),
                                                            timeout=self.device.timeout_s, retries=o.retries)
            except Exception as exc:  # pysnmp wraps resolver failures in PySnmpError
                raise DeviceUnreachable(self.device.name, f"cannot resolve {self.device.host}: {exc}") from exc
            context = hl.ContextData(contextName=o.context.encode()) if o.context else hl.ContextData()
            LCD.configure(self._engine, auth, target, context.contextName)
        finally:
            if slot is not None:
                slot.opening -= 1
                if slot.opening == 0 and slot.settled is not None:
                    slot.settled.set()
        if slot is not None and slot.opening and slot.settled is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.settled.wait(), OPEN_SETTLE_S)
        limit = endpoint_limit(self.device.host, self.device.port, o.max_inflight)
        self._session = _Session(auth, target, context, limit)
        return self._session

    # -- requests ------------------------------------------------------------------------------
    async def _request(self, s: _Session, what: str, oids: Sequence[Oid], max_rep: int = 0) -> list[VarBind]:
        """One GET (``max_rep`` 0) or GETBULK through pysnmp's command generators.

        hlapi's get_cmd/bulk_cmd first resolve every request OID through the MIB view
        (``make_varbinds``: ~0.6 ms per varbind here, most of a poll's CPU), which numeric OIDs
        do not need; so requests go to the same ``cmdgen`` generators hlapi calls, with the
        transport and security set up by hlapi's own LCD configurator.
        """
        from pysnmp.entity.rfc3413 import cmdgen
        from pysnmp.hlapi.v3arch.asyncio.cmdgen import LCD
        from pysnmp.proto.rfc1902 import Null, ObjectName

        engine = self._engine
        fut: asyncio.Future[tuple[Any, Any, Any, Any]] = asyncio.get_running_loop().create_future()

        def done(_engine: Any, _handle: Any, ei: Any, es: Any, ex: Any, vbs: Any, _ctx: Any) -> None:
            if not fut.done():
                fut.set_result((ei, es, ex, vbs))

        vbs = [(ObjectName(o), Null("")) for o in oids]
        await s.limit.acquire()
        try:
            addr, _params = LCD.configure(engine, s.auth, s.target, s.context.contextName)
            if max_rep:
                cmdgen.BulkCommandGenerator().send_varbinds(engine, addr, s.context.contextEngineId,
                                                            s.context.contextName, 0, max_rep, vbs, done)
            else:
                cmdgen.GetCommandGenerator().send_varbinds(engine, addr, s.context.contextEngineId,
                                                           s.context.contextName, vbs, done)
            ei, es, ex, resp = await fut
        except OSError as exc:
            raise DeviceUnreachable(self.device.name, f"{what}: {exc}") from exc
        finally:
            s.limit.release()
        self.requests += 1
        err = translate(self.device.name, what, ei, es, ex, oids)
        if err is not None:
            raise err
        self.varbinds += len(resp)
        return [(tuple(name), to_raw(val)) for name, val in resp]

    async def _get(self, s: _Session, oids: Sequence[Oid]) -> dict[Oid, Raw]:
        return dict(await self._request(s, "GET", oids))

    async def _bulk(self, s: _Session, oids: Sequence[Oid], max_rep: int) -> list[VarBind]:
        return await self._request(s, "GETBULK", oids, max_rep)

    async def walk(self, columns: Sequence[Oid], max_rep: int | None = None) -> BulkWalk:
        """Walk ``columns`` side by side to their ends (GETBULK, ``max_rep`` rows per request).

        A failing request ends the walk; it is returned with ``error`` set and the columns
        finished so far (``complete_rows``).
        """
        s = await self._open()
        w = BulkWalk(columns)
        reps = max_rep or self.plan.max_repetitions
        while not w.done:
            try:
                w.absorb(await self._bulk(s, w.request(), reps))
            except DeviceError as exc:
                w.error = exc
                break
        return w

    async def _scalars(self, s: _Session) -> dict[Oid, Raw]:
        oids = self.plan.get_oids
        n = self.options.max_get
        parts = await asyncio.gather(*(self._get(s, oids[i:i + n]) for i in range(0, len(oids), n)))
        out: dict[Oid, Raw] = {}
        for p in parts:
            out.update(p)
        return out

    # -- Poller --------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Open the session (engine, credentials) before the stamp."""
        await self._open()

    async def poll(self, ts_ns: int) -> PollResult:
        """Read the device once; partial failures come back in ``errors``, total ones raise."""
        s = await self._open()
        plan = self.plan
        want_digits = bool(plan.digit_columns) and (
            self._digits_ts_ns is None or ts_ns - self._digits_ts_ns >= plan.digits_refresh_s * 1e9)
        columns = plan.columns + (plan.digit_columns if want_digits else ())
        jobs: list[Any] = []
        if plan.scalars:
            jobs.append(self._scalars(s))
        if columns:
            jobs.append(self.walk(columns))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        scalars, rows, errors = merge_parts(self.device.name, results)
        if want_digits and all(c in rows for c in plan.digit_columns):
            for c in plan.digit_columns:
                self.decoder.set_digits(c, rows[c])
            self._digits_ts_ns = ts_ns
        batch, rejected = self.decoder.decode(ts_ns, scalars, rows)
        if not errors:
            # A complete poll in which a column of the profile has no row at all: the device
            # lacks it (a PX1 polled as a PX2). Counted per point, every poll, per device.
            absent = sum(len(pts) for c, pts in plan.points.items() if not rows.get(c))
            if absent:
                rejected[Reason.ABSENT] += absent
        if self.decoder.rows_without_digits:
            self._digits_ts_ns = None  # new sensor rows (or the digits walk failed): read digits next poll
        return PollResult(batch, errors, rejected)

    async def close(self) -> None:
        """Release the shared engine (the last poller of a loop closes its sockets)."""
        if self._engine is not None and self._own_engine:
            with contextlib.suppress(Exception):
                release_engine(self._engine)
        self._engine = None
        self._session = None


def merge_parts(device: str, results: Sequence[object]) -> tuple[dict[Oid, Raw], dict[Oid, list[tuple[Oid, Raw]]],
                                                                  list[DeviceError]]:
    """Scalars, finished table columns and errors of one poll's concurrent parts (GET, walk).

    Raises when nothing at all came back — the device is down, and a timeout is reported
    before other errors because it is what the runtime backs off.
    """
    scalars: dict[Oid, Raw] = {}
    rows: dict[Oid, list[tuple[Oid, Raw]]] = {}
    errors: list[DeviceError] = []
    for r in results:
        if isinstance(r, DeviceError):
            errors.append(r)
        elif isinstance(r, BaseException):
            raise r
        elif isinstance(r, BulkWalk):
            rows = r.complete_rows()
            errors += [DeviceProtocolError(device, f"GETBULK: {p}") for p in r.problems]
            if r.error is not None:
                errors.append(r.error)
        elif isinstance(r, dict):
            scalars = r
    if errors and not scalars and not rows:
        raise next((e for e in errors if isinstance(e, DeviceTimeout)), errors[0])
    return scalars, rows, errors


def make_snmp_poller(device: DeviceConfig, profile: Profile, registry: SeriesRegistry) -> SnmpPoller:
    """The Poller of an SNMP ``device`` (POLLER_FACTORIES["snmp"])."""
    if not isinstance(profile, SnmpProfile):
        raise ProfileError(profile.path, [("protocol", f"device {device.name} is SNMP but profile "
                                                       f"{profile.name!r} is {profile.protocol}")])
    return SnmpPoller(device, profile, registry)

