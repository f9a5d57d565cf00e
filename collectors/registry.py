"""Explicit registry of poller factories: protocol name -> how to build a Poller for a device.

No plugin discovery by import side effects: a protocol package adds one line here. MQTT is
not polled (the broker pushes), so it has no entry; see collectors/mqtt/.
"""

from __future__ import annotations

from collections.abc import Callable

from collectors.base import DeviceConfig, Poller
from collectors.profiles import Profile, find_profile
from models.errors import ConfigError
from models.readings import SeriesRegistry

PollerFactory = Callable[[DeviceConfig, Profile, SeriesRegistry], Poller]


def _modbus(device: DeviceConfig, profile: Profile, registry: SeriesRegistry) -> Poller:
    from collectors.modbus.poller import make_modbus_poller

    return make_modbus_poller(device, profile, registry)


def _snmp(device: DeviceConfig, profile: Profile, registry: SeriesRegistry) -> Poller:
    from collectors.snmp.client import make_snmp_poller

    return make_snmp_poller(device, profile, registry)


POLLER_FACTORIES: dict[str, PollerFactory] = {
    # -- modbus (helper A) --
    "modbus": _modbus,
    # -- snmp (helper B) --
    "snmp": _snmp,
}


def make_poller(device: DeviceConfig, registry: SeriesRegistry) -> Poller:
    """Build the poller of ``device`` from its protocol and profile."""
    factory = POLLER_FACTORIES.get(device.protocol)
    if factory is None:
        raise ConfigError(device.name, [("protocol", f"no poller for protocol {device.protocol!r}; "
                                                     f"one of {', '.join(sorted(POLLER_FACTORIES))}")])
    profile = find_profile(device.profile, device.protocol)
    return factory(device, profile, registry)
