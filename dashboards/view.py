"""The demo's live terminal view: a pure function from a snapshot to a rich renderable.

Energy comes first: what the site draws against what the grid allows, then where the
power goes (halls, rows, racks) and whether the cooling loops can carry its heat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from models.physics import pue


@dataclass(frozen=True)
class PowerRow:
    """One power node: its draw and limit."""

    id: str
    power_w: float
    limit_w: float
    note: str = ""


@dataclass(frozen=True)
class LoopRow:
    """One cooling loop."""

    id: str
    supply_c: float
    return_c: float
    max_return_c: float
    flow_lpm: float
    heat_w: float
    capacity_w: float
    pumps_running: int
    pumps: int


@dataclass(frozen=True)
class ViewState:
    """Everything the live view shows at one instant."""

    site: str
    source: str
    t_s: float
    duration_s: float
    speed: float
    facility_w: float
    it_w: float
    limit_w: float
    dr_target_w: float | None
    dr_state: str | None
    price_per_mwh: float
    currency: str
    carbon_g_per_kwh: float
    frequency_hz: float
    energy_mwh: float
    halls: list[PowerRow] = field(default_factory=list)
    rows: list[PowerRow] = field(default_factory=list)
    racks: list[PowerRow] = field(default_factory=list)
    loops: list[LoopRow] = field(default_factory=list)
    extra: list[RenderableType] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def effective_limit_w(self) -> float:
        """The limit in force: interconnect, or a lower DR target."""
        return self.limit_w if self.dr_target_w is None else min(self.limit_w, self.dr_target_w)

    @property
    def pue(self) -> float:
        """Facility power over IT power."""
        p = pue(self.facility_w, self.it_w)
        return float("nan") if p is None else p


def bar(value: float, limit: float, width: int = 24) -> Text:
    """A horizontal bar of ``value/limit``: green under 90 %, yellow to 100 %, red above."""
    frac = 0.0 if limit <= 0 else value / limit
    filled = min(width, max(0, round(frac * width)))
    style = "green" if frac < 0.9 else "yellow" if frac <= 1.0 else "bold red"
    return Text("█" * filled + "·" * (width - filled), style=style)


def _kw(w: float) -> str:
    return f"{w / 1e3:,.0f} kW"


def _mw(w: float) -> str:
    return f"{w / 1e6:,.2f} MW"


def render(s: ViewState) -> RenderableType:
    """The whole screen."""
    lim = s.effective_limit_w
    head = Table.grid(padding=(0, 2))
    head.add_column(justify="right", style="bold")
    head.add_column()
    head.add_column()
    limit_note = f"grid limit {_mw(s.limit_w)}"
    if s.dr_target_w is not None:
        limit_note += f"  ·  DR {s.dr_state}: target {_mw(s.dr_target_w)}"
    head.add_row("site power", Text(f"{_mw(s.facility_w)} of {_mw(lim)}", style="bold"), bar(s.facility_w, lim, 40))
    head.add_row("", Text(limit_note, style="dim"), "")
    head.add_row("IT / PUE", f"{_mw(s.it_w)}  ·  PUE {s.pue:.3f}", "")
    head.add_row("energy", f"{s.energy_mwh:,.3f} MWh", "")
    head.add_row("grid", f"{s.frequency_hz:.3f} Hz  ·  {s.price_per_mwh:,.1f} {s.currency}/MWh  ·  "
                         f"{s.carbon_g_per_kwh:,.0f} gCO2/kWh", "")
    title = (f"powerplane · {s.site} · t={s.t_s:,.0f}/{s.duration_s:,.0f} s "
             f"(x{s.speed:g}) · {s.source}")
    parts: list[RenderableType] = [Panel(head, title=title, border_style="cyan")]

    power = Table(expand=True, box=None, padding=(0, 1))
    power.add_column("level", style="dim")
    power.add_column("id")
    power.add_column("power", justify="right")
    power.add_column("limit", justify="right")
    power.add_column("load")
    power.add_column("", style="dim")
    for level, rows in (("hall", s.halls), ("row", s.rows), ("rack", s.racks)):
        for r in rows:
            power.add_row(level, r.id, _kw(r.power_w), _kw(r.limit_w), bar(r.power_w, r.limit_w), r.note)
    parts.append(Panel(power, title="power: halls, rows, racks", border_style="blue"))

    cool = Table(expand=True, box=None, padding=(0, 1))
    for col in ("loop", "supply", "return (max)", "flow", "pumps", "heat", "capacity", "load"):
        cool.add_column(col, justify="right" if col not in ("loop", "load") else "left")
    for lp in s.loops:
        ret_style = "bold red" if lp.return_c > lp.max_return_c else ""
        ret = Text(f"{lp.return_c:.1f} ({lp.max_return_c:.0f}) °C", style=ret_style)
        cool.add_row(lp.id, f"{lp.supply_c:.1f} °C", ret,
                     f"{lp.flow_lpm:,.0f} L/min", f"{lp.pumps_running}/{lp.pumps}", _kw(lp.heat_w),
                     _kw(lp.capacity_w), bar(lp.heat_w, lp.capacity_w))
    parts.append(Panel(cool, title="cooling loops", border_style="blue"))
    parts.extend(s.extra)
    if s.notes:
        parts.append(Panel(Text("\n".join(s.notes[-6:])), title="events", border_style="magenta"))
    return Group(*parts)


def render_line(s: ViewState) -> str:
    """One log line for a terminal that is not interactive."""
    dr = f" DR={s.dr_target_w / 1e6:.2f}MW({s.dr_state})" if s.dr_target_w is not None else ""
    loops = " ".join(f"{lp.id}:{lp.heat_w / 1e6:.2f}/{lp.capacity_w / 1e6:.2f}MW,{lp.return_c:.1f}C"
                     for lp in s.loops)
    return (f"t={s.t_s:6.0f}s site={s.facility_w / 1e6:.3f}MW limit={s.limit_w / 1e6:.2f}MW{dr} "
            f"IT={s.it_w / 1e6:.3f}MW PUE={s.pue:.3f} {loops}")
