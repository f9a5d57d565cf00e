"""Site configuration: the typed, validated form of a site TOML file.

A site is two hierarchies over the same racks:

    power:   feed -> ups -> hall -> row (busway) -> rack -> pdu -> node -> gpu
    cooling: loop (CDU) -> rack

Racks are instances of a rack *type* (rated power, nodes, GPUs per node, GPU power range,
PDUs, liquid-cooled share), so a 1,700-rack site stays a small file. All models are frozen
and reject unknown keys; cross-references (a rack's row, loop and type; a job's racks) are
checked by ``check_references`` so that every error names its key path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]

PDU_MODELS = ("apc-rpdu2", "raritan-pdu2")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SiteInfo(_Model):
    """Identity of the site and its grid connection."""

    name: Id
    timezone: str = "UTC"
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
    gpu_model: str = "gpu"
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
    priority: Annotated[int, Field(ge=0, le=15)] = Field(description="0 is the highest")
    placement: list[str] = Field(min_length=1, description='rack ids, or "rack:first-last" node ranges')
    checkpointable: bool = True
    utilization: Fraction = 0.9
    swing_hz: Annotated[float, Field(ge=0, le=20)] = 0.5
    swing_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.25
    checkpoint_every_s: NonNegFloat = 0.0
    weight: PosFloat = 1.0


PLACEMENT_RE = re.compile(r"^(?P<rack>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?::(?P<first>\d+)-(?P<last>\d+))?$")


class Grid(_Model):
    """Price and carbon curves of the grid the site draws from."""

    currency: str = "EUR"
    price_base_per_mwh: float = 90.0
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
    pumps_failed: Annotated[int, Field(gt=0)] = 1


class SupplyExcursion(_Model):
    """The facility water warms up and a loop's supply temperature rises."""

    loop: Id
    start_s: NonNegFloat
    duration_s: PosFloat
    delta_c: Annotated[float, Field(gt=0, le=30)]


class Twin(_Model):
    """Scenario of the digital twin: seed, start time and scheduled events."""

    seed: int = 1
    start: datetime | None = None
    step_s: Annotated[float, Field(gt=0, le=1)] = 0.1
    demand_response: list[DemandResponse] = []
    pump_failures: list[PumpFailure] = []
    supply_excursions: list[SupplyExcursion] = []


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

    url: Annotated[str, Field(pattern=r"^https?://")]
    secret_env: str | None = Field(default=None, description="environment variable holding the HMAC secret")
    secret_file: str | None = Field(default=None, description="file holding the HMAC secret")
    kinds: list[str] = Field(default_factory=list, description="event kinds to send (empty: all hook kinds)")
    max_tries: Annotated[int, Field(ge=1, le=100)] = 6
    timeout_s: PosFloat = 5.0


class Hooks(_Model):
    """Where scheduler events go: webhooks, MQTT event topics, Slurm and Kubernetes adapters."""

    webhooks: list[Webhook] = []
    mqtt_events: bool = True
    dead_letter: str = Field(default="powerplane-data/hooks-dead-letter.jsonl",
                             description="events a webhook never accepted, one JSON per line")
    slurm: Literal["off", "dry-run", "apply"] = "off"
    kubernetes: Literal["off", "dry-run", "apply"] = "off"
    headroom_low_share: Fraction = Field(default=0.05, description="headroom_low below this share of a limit")


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
    twin: Twin = Twin()
    controller: Controller = Controller()
    actuation: Actuation = Actuation()
    hooks: Hooks = Hooks()

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
    problems += list(_dupes([(f"jobs[{i}].id", j.id) for i, j in enumerate(site.jobs)]))

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
    for i, job in enumerate(site.jobs):
        for k, spec in enumerate(job.placement):
            m = PLACEMENT_RE.match(spec)
            path = f"jobs[{i}].placement[{k}]"
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
    # Two jobs must not claim the same GPUs.
    claimed: dict[tuple[str, int], str] = {}
    for i, job in enumerate(site.jobs):
        for k, spec in enumerate(job.placement):
            m = PLACEMENT_RE.match(spec)
            if not m or m["rack"] not in racks or racks[m["rack"]].type not in site.rack_types:
                continue
            nodes = site.rack_types[racks[m["rack"]].type].nodes
            first = int(m["first"]) if m["first"] is not None else 0
            last = int(m["last"]) if m["last"] is not None else nodes - 1
            for node in range(first, min(last, nodes - 1) + 1):
                owner = claimed.setdefault((m["rack"], node), job.id)
                if owner != job.id:
                    problems.append((f"jobs[{i}].placement[{k}]",
                                     f"node {node} of rack {m['rack']!r} already belongs to job {owner!r}"))
                    break
    return problems


def load_site(path: str | Path, data: dict[str, Any] | None = None) -> SiteConfig:
    """Load and fully validate a site file; every problem is reported as a ConfigError."""
    from models.configfile import load_model

    return load_model(path, SiteConfig, check_references, data=data)
