"""Site configuration: the typed, validated form of a site TOML file.

A site is two hierarchies over the same racks:

    power:   feed -> ups -> hall -> row (busway) -> rack -> pdu -> node -> gpu
    cooling: loop (CDU) -> rack

Racks are instances of a rack *type* (rated power, nodes, GPUs per node, GPU power range,
PDUs, liquid-cooled share), so a 1,700-rack site stays a small file. All models are frozen
and reject unknown keys; cross-references (a rack's row, loop and type; a job's racks) are
checked by ``check_references`` so that every error names its key path.

A site file is hostile input until it has loaded (issue 13, finding 15):

* types are strict: a bool is not a number (``limit_kw = true`` is refused) and a string
  is not one either; every float is finite and every quantity has an upper bound
  (``MAX_QUANTITY``), so no limit can overflow to infinity when kW become W;
* the timezone is an IANA key that ``zoneinfo`` knows (never a path);
* the file is at most ``models.configfile.MAX_FILE_BYTES``, nested at most
  ``MAX_DEPTH`` deep, and holds at most ``MAX_RACKS`` racks, ``MAX_NODES`` nodes and
  ``MAX_GPUS`` GPUs (and the list caps in ``LIST_CAPS``), checked before the bulk of the
  validation runs. A site of the size we claim (1,700 racks, ~1M GPUs) loads well inside them.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# Site size limits: about three times the largest site we claim (1,700 racks, ~250k nodes, ~1M GPUs),
# and consistent: MAX_RACKS generated racks (144 nodes, 576 GPUs each) fit under MAX_NODES and MAX_GPUS.
MAX_RACKS = 5_000
MAX_NODES = 1_000_000
MAX_GPUS = 3_000_000  # 5,000 racks of 576 GPUs (Rubin Ultra NVL576)
MAX_JOBS = 50_000
MAX_PLACEMENTS = 200_000  # placement entries over all jobs
MAX_PRIORITY = 15
# Every quantity (kW, W, s, L/min, ...) is at most this: 1 TW in kW, 31 years in seconds.
# Far beyond any real site, and small enough that x1000 (kW -> W) or x1e9 (s -> ns) stays finite.
MAX_QUANTITY = 1e9
# Lists longer than these are refused before their items are validated (key path -> cap).
LIST_CAPS: dict[str, int] = {
    "feeds": 1_024, "ups": 4_096, "halls": 4_096, "rows": MAX_RACKS, "racks": MAX_RACKS, "loops": MAX_RACKS,
    "rack_types": 1_024, "jobs": MAX_JOBS, "twin.demand_response": 10_000, "twin.pump_failures": 10_000,
    "twin.supply_excursions": 10_000, "hooks.webhooks": 64,
}

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
PosFloat = Annotated[float, Field(gt=0, le=MAX_QUANTITY, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, le=MAX_QUANTITY, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=4096)]
_TZ_RE = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,3}$")


def known_timezone(key: str) -> str:
    """``key`` if it names an IANA time zone that zoneinfo can load, else a ValueError."""
    if len(key) > 64 or not _TZ_RE.match(key):
        raise ValueError(f"not an IANA time zone name like 'Europe/Amsterdam': {key[:80]!r}")
    try:
        zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata directory, e.g. "America"
        raise ValueError(f"unknown time zone {key!r}") from None
    return key


def _within_int64_ns(t: datetime) -> datetime:
    # Twin start times become int64 nanoseconds (numpy): 1970 .. 2262.
    aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    if not datetime(1970, 1, 1, tzinfo=UTC) <= aware <= datetime(2200, 1, 1, tzinfo=UTC):
        raise ValueError(f"must be between 1970 and 2200, got {t.isoformat()}")
    return t

PDU_MODELS = ("apc-rpdu2", "raritan-pdu2")


class _Model(BaseModel):
    # strict: TOML is typed, so a bool or a string where a number belongs is an error, not a coercion
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class SiteInfo(_Model):
    """Identity of the site and its grid connection."""

    name: Id
    timezone: Annotated[str, AfterValidator(known_timezone)] = "UTC"
    interconnect_limit_kw: PosFloat = Field(description="facility power allowed at the point of interconnection")
    frequency_nominal_hz: Literal[50, 60] = 50


class Facility(_Model):
    """Facility overhead model (see models.physics.OverheadModel)."""

    overhead_fixed_kw: NonNegFloat = 0.0
    overhead_linear: NonNegFloat = 0.06
    overhead_quadratic: NonNegFloat = 0.04


class Feed(_Model):
    """A utility feed / medium-voltage switchboard supplying IT load."""

    id: Id
    limit_kw: PosFloat
    voltage_v: PosFloat = 415.0


class Ups(_Model):
    """A UPS system (or switchboard) fed by one feed."""

    id: Id
    feed: Id
    limit_kw: PosFloat
    efficiency: Fraction = 0.965
    battery_kwh: NonNegFloat = 500.0


class Hall(_Model):
    """A data hall (or a power zone of one) fed by one UPS system."""

    id: Id
    ups: Id
    limit_kw: PosFloat


class Row(_Model):
    """A row of racks on one busway."""

    id: Id
    hall: Id
    limit_kw: PosFloat


class RackType(_Model):
    """What a rack contains: nodes, GPUs, their power range and how it is distributed."""

    rated_kw: PosFloat
    nodes: Annotated[int, Field(gt=0, le=4096)]
    gpus_per_node: Annotated[int, Field(gt=0, le=64)]
    gpu_model: Annotated[str, Field(max_length=64)] = "gpu"
    gpu_min_w: PosFloat = Field(description="lowest power cap the GPU accepts")
    gpu_max_w: PosFloat = Field(description="highest power cap (TDP)")
    gpu_idle_w: PosFloat = 100.0
    node_base_w: NonNegFloat = Field(400.0, description="CPU, memory, NICs and fans of one node")
    psu_efficiency: Fraction = 0.97
    node_limit_kw: PosFloat | None = None
    rack_overhead_w: NonNegFloat = Field(5000.0, description="switches, power shelves, fans")
    pdus: Annotated[int, Field(gt=0, le=16)] = 2
    pdu_limit_kw: PosFloat | None = None
    pdu_model: Literal["apc-rpdu2", "raritan-pdu2", "mixed"] = "mixed"
    liquid_fraction: Fraction = 0.9

    @model_validator(mode="after")
    def _gpu_range(self) -> RackType:
        if not self.gpu_min_w <= self.gpu_max_w:
            raise ValueError(f"gpu_min_w ({self.gpu_min_w}) must not exceed gpu_max_w ({self.gpu_max_w})")
        if self.gpu_idle_w > self.gpu_max_w:
            raise ValueError(f"gpu_idle_w ({self.gpu_idle_w}) must not exceed gpu_max_w ({self.gpu_max_w})")
        if self.nodes % self.pdus:
            raise ValueError(f"nodes ({self.nodes}) must be a multiple of pdus ({self.pdus})")
        return self

    @property
    def gpus(self) -> int:
        """GPUs in one rack of this type."""
        return self.nodes * self.gpus_per_node


class Rack(_Model):
    """One rack: where it sits in the power tree and which loop cools it."""

    id: Id
    row: Id
    type: Id
    loop: Id
    limit_kw: PosFloat | None = Field(None, description="defaults to the rack type's rated_kw")


class Loop(_Model):
    """A CDU secondary loop serving racks."""

    id: Id
    coolant: Literal["water", "pg25"] = "water"
    flow_lpm: PosFloat = Field(description="design flow with all pumps running")
    supply_c: Annotated[float, Field(ge=5, le=60)] = 30.0
    max_return_c: Annotated[float, Field(gt=5, le=80)] = 45.0
    hx_rated_kw: PosFloat = Field(description="heat exchanger rating")
    pumps: Annotated[int, Field(gt=0, le=8)] = 2
    design_dp_kpa: PosFloat = 150.0

    @model_validator(mode="after")
    def _temperatures(self) -> Loop:
        if self.max_return_c <= self.supply_c:
            raise ValueError(f"max_return_c ({self.max_return_c}) must exceed supply_c ({self.supply_c})")
        return self


class Job(_Model):
    """A GPU job placed on racks (or node ranges of racks)."""

    id: Id
    kind: Literal["training", "inference", "batch"] = "training"
    priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY)] = Field(description="0 is the highest")
    placement: list[Annotated[str, Field(max_length=96)]] = Field(
        min_length=1, max_length=MAX_RACKS, description='rack ids, or "rack:first-last" node ranges')
    checkpointable: bool = True
    utilization: Fraction = 0.9
    swing_hz: Annotated[float, Field(ge=0, le=20)] = 0.5
    swing_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.25
    checkpoint_every_s: NonNegFloat = 0.0
    weight: PosFloat = 1.0


PLACEMENT_RE = re.compile(r"^(?P<rack>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?::(?P<first>\d{1,6})-(?P<last>\d{1,6}))?$")


class Grid(_Model):
    """Price and carbon curves of the grid the site draws from."""

    currency: Annotated[str, Field(max_length=8)] = "EUR"
    price_base_per_mwh: Annotated[float, Field(ge=-1e6, le=1e6)] = 90.0
    price_daily_swing: Annotated[float, Field(ge=0, le=1)] = 0.35
    carbon_base_g_per_kwh: NonNegFloat = 250.0
    carbon_solar_dip: Annotated[float, Field(ge=0, le=1)] = 0.4


class DemandResponse(_Model):
    """A demand-response event: the site must stay under ``target_kw`` while it lasts."""

    id: Id
    start_s: NonNegFloat = Field(description="seconds after the twin starts")
    duration_s: PosFloat
    target_kw: PosFloat
    notice_s: NonNegFloat = 60.0


class PumpFailure(_Model):
    """Pumps of a loop stop for a while."""

    loop: Id
    start_s: NonNegFloat
    duration_s: PosFloat
    pumps_failed: Annotated[int, Field(gt=0, le=8)] = 1


class SupplyExcursion(_Model):
    """The facility water warms up and a loop's supply temperature rises."""

    loop: Id
    start_s: NonNegFloat
    duration_s: PosFloat
    delta_c: Annotated[float, Field(gt=0, le=30)]


class TwinJob(Job):
    """A job that the scheduler starts and ends during the twin's run: the demo writes it to the
    Slurm spool (as the prolog would) at ``start_s`` and removes it (as the epilog would) at ``end_s``;
    the twin's GPUs of its placement draw its load only in between."""

    priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY)] | None = Field(  # type: ignore[assignment]
        default=None, description="asked for by the job (it may only lower its priority); default: the rules'")
    start_s: NonNegFloat = Field(description="seconds after the twin starts")
    end_s: PosFloat | None = Field(default=None, description="seconds after the twin starts; default: never")
    partition: Annotated[str, Field(max_length=64)] = ""
    qos: Annotated[str, Field(max_length=64)] = ""

    @model_validator(mode="after")
    def _window(self) -> TwinJob:
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class TwinScenario(_Model):
    """Scenario of the digital twin: seed, start time and scheduled events."""

    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 1
    start: Annotated[datetime, AfterValidator(_within_int64_ns)] | None = None
    step_s: Annotated[float, Field(gt=0, le=1)] = 0.1
    demand_response: list[DemandResponse] = []
    pump_failures: list[PumpFailure] = []
    supply_excursions: list[SupplyExcursion] = []
    jobs: list[TwinJob] = []


class Controller(_Model):
    """Power-capping controller settings (all optional; the defaults suit a 1 s period)."""

    period_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 1.0
    margin: Annotated[float, Field(ge=0, lt=0.5, allow_inf_nan=False)] = Field(
        default=0.02, description="share of every limit kept free (meter error, lag)")
    ramp_w_per_s: PosFloat = Field(default=60.0, description="how fast one GPU's cap may rise")
    cap_threshold: Fraction = Field(default=1.0, description="capping starts above this share of a limit")
    target_threshold: Fraction = Field(default=0.97, description="a capping constraint holds its load at this share")
    release_threshold: Fraction = Field(default=0.92, description="capping stops when demand falls below this share")
    stale_after_s: PosFloat = Field(default=3.0, description="telemetry older than this is stale")
    demand_ewma_s: PosFloat = Field(default=5.0, description="time constant of the demand average")
    demand_peak_s: PosFloat = Field(default=10.0, description="window of the recent demand peak")
    dr_lead_s: NonNegFloat = Field(default=10.0, description="apply a DR target this long before it starts")
    node_power_every_s: NonNegFloat = Field(
        default=10.0, description="each server's power (from its agent) is stored this often, spread over the "
                                  "periods; every rack's servers summed go every period (0: servers never)")
    node_caps_every_s: NonNegFloat = Field(
        default=10.0, description="each server's cap is stored when it changes, but when more servers' caps "
                                  "change than a period's share of this interval, those stored longest ago "
                                  "go first (0: every change at once)")
    totals_max_age_s: PosFloat = Field(
        default=75.0, description="site IT power and PUE are derived from UPS readings up to this old "
                                  "(UPSes are polled every 10-60 s); their age is stored with them")

    @model_validator(mode="after")
    def _thresholds(self) -> Controller:
        if not self.release_threshold < self.target_threshold <= self.cap_threshold:
            raise ValueError(f"thresholds must satisfy release ({self.release_threshold}) < target "
                             f"({self.target_threshold}) <= cap ({self.cap_threshold})")
        return self


class Actuation(_Model):
    """How caps reach the GPUs: MQTT cap commands with leases, and the agents' fallback."""

    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")] = "powerplane"
    lease_s: Annotated[float, Field(ge=2, le=600, allow_inf_nan=False)] = Field(
        default=15.0, description="a node falls back to its safe cap when no plan renews its caps this long")
    renew_s: PosFloat | None = Field(default=None, description="re-send unchanged caps this often (default lease/2)")
    safe_cap_w: PosFloat | None = Field(
        default=None, description="per-GPU cap a node falls back to (default: the rack type's gpu_min_w)")
    settle_s: PosFloat = Field(default=3.0, description="a node must enforce and follow a lowered cap within this")
    quantum_w: Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)] = Field(
        default=10.0, description="caps are sent rounded down to this step (never above the plan)")
    raise_deadband_w: NonNegFloat = Field(default=20.0, description="a raise smaller than this waits for renewal")
    raise_every_s: NonNegFloat = Field(default=2.0, description="a node gets a raise at most this often")
    hostname_template: Annotated[str, Field(max_length=200, pattern=r"^[A-Za-z0-9.{}:_\-]*\{index(:0?\d+d)?\}"
                                                                     r"[A-Za-z0-9.{}:_\-]*$")] = Field(
        default="{rack}-node-{index:03d}",
        description="host name of a node (fields rack and index, rack order from 0): --node-from-hostname")
    status_every_s: PosFloat = Field(default=1.0, description="agents report enforced limit and power this often "
                                                              "(once per period: the controller's server power)")

    @model_validator(mode="after")
    def _hostname(self) -> Actuation:
        try:
            self.hostname_template.format(rack="r01", index=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"hostname_template: only {{rack}} and {{index}} can be used ({exc})") from None
        return self

    @model_validator(mode="after")
    def _renew(self) -> Actuation:
        if self.renew_s is not None and self.renew_s >= self.lease_s:
            raise ValueError(f"renew_s ({self.renew_s}) must be shorter than lease_s ({self.lease_s})")
        return self

    @property
    def renew_every_s(self) -> float:
        """How often unchanged caps are re-sent."""
        return self.renew_s if self.renew_s is not None else self.lease_s / 2.0


class Webhook(_Model):
    """One HTTP endpoint that receives scheduler events."""

    url: Annotated[str, Field(pattern=r"^https?://", max_length=2048)]
    secret_env: Text | None = Field(default=None, description="environment variable holding the HMAC secret")
    secret_file: Text | None = Field(default=None, description="file holding the HMAC secret")
    kinds: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=64, description="event kinds to send (empty: all hook kinds)")
    max_tries: Annotated[int, Field(ge=1, le=100)] = 6
    timeout_s: PosFloat = 5.0


class Hooks(_Model):
    """Where scheduler events go: webhooks, MQTT event topics, Slurm and Kubernetes adapters."""

    webhooks: list[Webhook] = []
    mqtt_events: bool = True
    dead_letter: Text = Field(default="powerplane-data/hooks-dead-letter.jsonl",
                             description="events a webhook never accepted, one JSON per line")
    slurm: Literal["off", "dry-run", "apply"] = "off"
    kubernetes: Literal["off", "dry-run", "apply"] = "off"
    headroom_low_share: Fraction = Field(default=0.05, description="headroom_low below this share of a limit")


Glob = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.*?\-\[\]!/]+$")]
JobKind = Literal["training", "inference", "batch"]


class PriorityRule(_Model):
    """Priority (and weight, kind, checkpointability) of scheduler jobs that match; the first rule that
    matches wins. Every key given must match (shell-style globs); a key not given matches anything."""

    source: Literal["any", "slurm", "kubernetes"] = "any"
    partition: Glob | None = Field(default=None, description="Slurm partition")
    qos: Glob | None = Field(default=None, description="Slurm QOS")
    account: Glob | None = Field(default=None, description="Slurm account")
    namespace: Glob | None = Field(default=None, description="Kubernetes namespace")
    priority_class: Glob | None = Field(default=None, description="Kubernetes PriorityClass name")
    priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY)] = Field(description="0 is the highest")
    weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0
    checkpointable: bool = True
    kind: JobKind = "training"


class Scheduler(_Model):
    """Live jobs from the schedulers (Slurm prolog/epilog spool or HTTP, Kubernetes pods): how they map
    to priorities, and how many the controller keeps."""

    rules: list[PriorityRule] = Field(default_factory=list, max_length=256)
    default_priority: Annotated[int, Field(ge=0, le=MAX_PRIORITY)] = Field(
        default=8, description="priority of a job no rule matches")
    default_weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0
    default_checkpointable: bool = True
    default_kind: JobKind = "training"
    job_may_lower_priority: bool = Field(
        default=True, description="a job may ask for a lower priority than its rule's (never a higher one)")
    max_jobs: Annotated[int, Field(ge=1, le=MAX_JOBS)] = Field(default=10_000, description="live jobs at most")


class SiteConfig(_Model):
    """A whole site: power tree, cooling loops, racks, jobs, grid and twin scenario."""

    site: SiteInfo
    facility: Facility = Facility()
    feeds: list[Feed] = Field(min_length=1)
    ups: list[Ups] = Field(min_length=1)
    halls: list[Hall] = Field(min_length=1)
    rows: list[Row] = Field(min_length=1)
    rack_types: dict[Id, RackType] = Field(min_length=1)
    racks: list[Rack] = Field(min_length=1)
    loops: list[Loop] = Field(min_length=1)
    jobs: list[Job] = []
    grid: Grid = Grid()
    twin: TwinScenario = TwinScenario()
    controller: Controller = Controller()
    actuation: Actuation = Actuation()
    hooks: Hooks = Hooks()
    scheduler: Scheduler = Scheduler()

    def rack_type(self, rack: Rack) -> RackType:
        """The type of ``rack``."""
        return self.rack_types[rack.type]

    def rack_limit_kw(self, rack: Rack) -> float:
        """The rack's breaker limit: its own ``limit_kw`` or its type's rating."""
        return rack.limit_kw if rack.limit_kw is not None else self.rack_types[rack.type].rated_kw


def _dupes(items: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    seen: dict[str, str] = {}
    for path, ident in items:
        if ident in seen:
            yield path, f"duplicate id {ident!r} (first at {seen[ident]})"
        else:
            seen[ident] = path


def check_references(site: SiteConfig) -> list[tuple[str, str]]:
    """Check ids and cross-references; return ``(key_path, problem)`` for each error."""
    problems: list[tuple[str, str]] = []
    all_ids: list[tuple[str, str]] = []
    for section in ("feeds", "ups", "halls", "rows", "racks", "loops"):
        all_ids += [(f"{section}[{i}].id", item.id) for i, item in enumerate(getattr(site, section))]
    problems += list(_dupes(all_ids))
    problems += list(_dupes([(f"jobs[{i}].id", j.id) for i, j in enumerate(site.jobs)]
                            + [(f"twin.jobs[{i}].id", j.id) for i, j in enumerate(site.twin.jobs)]))

    def ref(path: str, value: str, known: Mapping[str, object], what: str) -> None:
        if value not in known:
            listed = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
            problems.append((path, f"unknown {what} {value!r} (known: {listed})"))

    feeds = {f.id: f for f in site.feeds}
    ups = {u.id: u for u in site.ups}
    halls = {h.id: h for h in site.halls}
    rows = {r.id: r for r in site.rows}
    loops = {lp.id: lp for lp in site.loops}
    racks = {r.id: r for r in site.racks}
    for i, u in enumerate(site.ups):
        ref(f"ups[{i}].feed", u.feed, feeds, "feed")
    for i, h in enumerate(site.halls):
        ref(f"halls[{i}].ups", h.ups, ups, "ups")
    for i, row in enumerate(site.rows):
        ref(f"rows[{i}].hall", row.hall, halls, "hall")
    for i, rack in enumerate(site.racks):
        ref(f"racks[{i}].row", rack.row, rows, "row")
        ref(f"racks[{i}].type", rack.type, site.rack_types, "rack type")
        ref(f"racks[{i}].loop", rack.loop, loops, "loop")
    placed_jobs: list[tuple[str, Job]] = [(f"jobs[{i}]", j) for i, j in enumerate(site.jobs)]
    placed_jobs += [(f"twin.jobs[{i}]", j) for i, j in enumerate(site.twin.jobs)]
    for where, job in placed_jobs:
        for k, spec in enumerate(job.placement):
            m = PLACEMENT_RE.match(spec)
            path = f"{where}.placement[{k}]"
            if not m:
                problems.append((path, f'{spec!r} is not "rack" or "rack:first-last"'))
                continue
            placed = racks.get(m["rack"])
            if placed is None:
                ref(path, m["rack"], racks, "rack")
                continue
            if m["first"] is not None and placed.type in site.rack_types:
                first, last = int(m["first"]), int(m["last"])
                nodes = site.rack_types[placed.type].nodes
                if not 0 <= first <= last < nodes:
                    problems.append((path, f"node range {first}-{last} outside 0-{nodes - 1}"))
    for i, pf in enumerate(site.twin.pump_failures):
        ref(f"twin.pump_failures[{i}].loop", pf.loop, loops, "loop")
    for i, ex in enumerate(site.twin.supply_excursions):
        ref(f"twin.supply_excursions[{i}].loop", ex.loop, loops, "loop")
    for i, pf in enumerate(site.twin.pump_failures):
        if pf.loop in loops and pf.pumps_failed > loops[pf.loop].pumps:
            problems.append((f"twin.pump_failures[{i}].pumps_failed",
                             f"{pf.pumps_failed} exceeds the loop's {loops[pf.loop].pumps} pumps"))
    # Two jobs must not claim the same GPUs: site-file jobs never; a twin job's nodes must be free of
    # site-file jobs, and two twin jobs may share nodes only one after the other.
    claimed: dict[tuple[str, int], str] = {}
    windows = {j.id: (j.start_s, j.end_s if j.end_s is not None else float("inf")) for j in site.twin.jobs}
    twin_claims: dict[tuple[str, int], list[str]] = {}
    for where, job in placed_jobs:
        for k, spec in enumerate(job.placement):
            m = PLACEMENT_RE.match(spec)
            if not m or m["rack"] not in racks or racks[m["rack"]].type not in site.rack_types:
                continue
            nodes = site.rack_types[racks[m["rack"]].type].nodes
            first = int(m["first"]) if m["first"] is not None else 0
            last = int(m["last"]) if m["last"] is not None else nodes - 1
            for node in range(first, min(last, nodes - 1) + 1):
                if job.id in windows:  # a twin job
                    site_owner = claimed.get((m["rack"], node))
                    mine = windows[job.id]
                    other = next((o for o in twin_claims.get((m["rack"], node), [])
                                  if o != job.id and windows[o][0] < mine[1] and mine[0] < windows[o][1]), None)
                    owner = site_owner or other or job.id
                    twin_claims.setdefault((m["rack"], node), []).append(job.id)
                else:
                    owner = claimed.setdefault((m["rack"], node), job.id)
                if owner != job.id:
                    problems.append((f"{where}.placement[{k}]",
                                     f"node {node} of rack {m['rack']!r} already belongs to job {owner!r}"))
                    break
    return problems


def check_list_sizes(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Lists of a raw (parsed, not yet validated) site that exceed ``LIST_CAPS``: cheap, so it runs first."""
    problems: list[tuple[str, str]] = []
    for key, cap in LIST_CAPS.items():
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, list | Mapping) and len(node) > cap:
            problems.append((key, f"{len(node):,} entries; a site holds at most {cap:,}"))
    jobs = raw.get("jobs")
    twin = raw.get("twin")
    twin_jobs = twin.get("jobs") if isinstance(twin, Mapping) else None
    jobs = [*(jobs if isinstance(jobs, list) else []), *(twin_jobs if isinstance(twin_jobs, list) else [])]
    if jobs:
        placements = sum(len(j["placement"]) for j in jobs
                         if isinstance(j, Mapping) and isinstance(j.get("placement"), list))
        if placements > MAX_PLACEMENTS:
            problems.append(("jobs", f"{placements:,} placement entries in all; a site holds at most "
                                     f"{MAX_PLACEMENTS:,}"))
    return problems


def check_size(site: SiteConfig) -> list[tuple[str, str]]:
    """Nodes and GPUs over all racks against ``MAX_NODES`` and ``MAX_GPUS`` (before any array is built)."""
    nodes = gpus = 0
    for rack in site.racks:
        rt = site.rack_types.get(rack.type)
        if rt is not None:
            nodes += rt.nodes
            gpus += rt.gpus
    problems = []
    if nodes > MAX_NODES:
        problems.append(("racks", f"{nodes:,} nodes in all; a site holds at most {MAX_NODES:,}"))
    if gpus > MAX_GPUS:
        problems.append(("racks", f"{gpus:,} GPUs in all; a site holds at most {MAX_GPUS:,}"))
    return problems


def check_site(site: SiteConfig) -> list[tuple[str, str]]:
    """Every check past the models: size first (a huge site is not walked), then references."""
    return check_size(site) or check_references(site)


def load_site(path: str | Path, data: dict[str, Any] | None = None) -> SiteConfig:
    """Load and fully validate a site file; every problem is reported as a ConfigError."""
    from models.configfile import load_model, read_toml
    from models.errors import ConfigError

    raw = read_toml(path) if data is None else data
    problems = check_list_sizes(raw)
    if problems:
        raise ConfigError(path, problems)
    return load_model(path, SiteConfig, check_site, data=raw)
