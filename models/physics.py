"""Physics shared by the twin, the controller and the analytics: pure functions on floats/arrays.

Liquid cooling: a loop removes Q = m_dot * cp * dT. Its *capacity* is the heat it can remove
without the return temperature exceeding its limit, so it falls when flow is lost or the
supply temperature rises:

    capacity_w = min(hx_rated_w, m_dot * cp * (max_return_c - supply_c))

Facility overhead (cooling plant, conversion and distribution losses, lighting) grows with
IT load. We use the usual quadratic fit

    overhead_w(it) = fixed_w + linear * it + quadratic * it**2 / it_rated_w

so PUE = (it + overhead_w(it)) / it, and the IT budget under a facility limit is the
positive root of ``it + overhead_w(it) = limit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

CoolantName = Literal["water", "pg25"]


@dataclass(frozen=True, slots=True)
class Coolant:
    """Thermophysical properties of a coolant near 30-40 C."""

    name: str
    cp_j_per_kg_k: float
    density_kg_per_l: float


# Water at ~30 C; PG25 is 25 % propylene glycol by mass (typical for facility loops that
# must not freeze). Values are the usual engineering-table figures at ~30 C.
COOLANTS: dict[str, Coolant] = {
    "water": Coolant("water", 4186.0, 0.997),
    "pg25": Coolant("pg25", 3930.0, 1.020),
}


def mass_flow_kg_s(flow_lpm: float, coolant: Coolant) -> float:
    """Convert a volumetric flow in L/min to a mass flow in kg/s."""
    return flow_lpm * coolant.density_kg_per_l / 60.0


def heat_removed_w(flow_lpm: float, supply_c: float, return_c: float, coolant: Coolant) -> float:
    """Heat carried away by a loop: Q = m_dot * cp * (T_return - T_supply), in W."""
    return mass_flow_kg_s(flow_lpm, coolant) * coolant.cp_j_per_kg_k * (return_c - supply_c)


def loop_capacity_w(
    flow_lpm: float, supply_c: float, max_return_c: float, coolant: Coolant, hx_rated_w: float
) -> float:
    """Heat a loop can remove without exceeding ``max_return_c``, capped by its exchanger."""
    dt_k = max(0.0, max_return_c - supply_c)
    q = mass_flow_kg_s(max(0.0, flow_lpm), coolant) * coolant.cp_j_per_kg_k * dt_k
    return min(hx_rated_w, q)


def loop_capacity_w_array(
    flow_lpm: NDArray[np.float64],
    supply_c: NDArray[np.float64],
    max_return_c: NDArray[np.float64],
    cp_j_per_kg_k: NDArray[np.float64],
    density_kg_per_l: NDArray[np.float64],
    hx_rated_w: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Vectorised ``loop_capacity_w`` over loops."""
    m_dot = np.maximum(flow_lpm, 0.0) * density_kg_per_l / 60.0
    dt_k = np.maximum(max_return_c - supply_c, 0.0)
    return np.minimum(hx_rated_w, m_dot * cp_j_per_kg_k * dt_k)


def flow_for_heat_lpm(heat_w: float, delta_t_k: float, coolant: Coolant) -> float:
    """Flow in L/min needed to carry ``heat_w`` at a temperature rise of ``delta_t_k``."""
    if delta_t_k <= 0:
        raise ValueError("delta_t_k must be > 0")
    m_dot = heat_w / (coolant.cp_j_per_kg_k * delta_t_k)
    return m_dot / coolant.density_kg_per_l * 60.0


def pue(facility: float, it: float) -> float | None:
    """Power usage effectiveness, facility / IT (powers or energies); None where undefined.

    Undefined means: IT not positive, either side not finite, or facility below IT (a
    meter disagreement, never a PUE under 1). The one PUE of powerplane: the controller's
    derived totals, the twin's truth and the report all use it.
    """
    if not (math.isfinite(facility) and math.isfinite(it)) or it <= 0 or facility < it:
        return None
    return facility / it


@dataclass(frozen=True, slots=True)
class OverheadModel:
    """Facility overhead as a function of IT load (see module docstring)."""

    fixed_w: float
    linear: float
    quadratic: float
    it_rated_w: float

    def overhead_w(self, it_w: float) -> float:
        """Non-IT facility power at IT load ``it_w``."""
        it = max(0.0, it_w)
        return self.fixed_w + self.linear * it + self.quadratic * it * it / self.it_rated_w

    def facility_w(self, it_w: float) -> float:
        """Total facility power at IT load ``it_w``."""
        return max(0.0, it_w) + self.overhead_w(it_w)

    def pue(self, it_w: float) -> float:
        """Power usage effectiveness at IT load ``it_w`` (inf at zero IT load)."""
        p = pue(self.facility_w(it_w), it_w)
        return math.inf if p is None else p

    def it_budget_w(self, facility_limit_w: float) -> float:
        """Largest IT load whose facility power stays within ``facility_limit_w``."""
        room = facility_limit_w - self.fixed_w
        if room <= 0:
            return 0.0
        a = self.quadratic / self.it_rated_w
        b = 1.0 + self.linear
        if a == 0.0:
            return room / b
        # a*x^2 + b*x - room = 0, stable form of the positive root.
        return 2.0 * room / (b + math.sqrt(b * b + 4.0 * a * room))


def electrical_power_w(voltage_ll_v: float, current_a: float, power_factor: float) -> float:
    """Three-phase active power from line-to-line voltage, line current and power factor."""
    return math.sqrt(3.0) * voltage_ll_v * current_a * power_factor


def line_current_a(power_w: float, voltage_ll_v: float, power_factor: float) -> float:
    """Three-phase line current drawn by ``power_w`` at ``voltage_ll_v`` and ``power_factor``."""
    return power_w / (math.sqrt(3.0) * voltage_ll_v * power_factor)
