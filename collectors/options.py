"""Protocol options of a device (``[devices.options]`` in collect.toml), as validated models.

One model per protocol, strict and closed: a misspelt option (``unitt = 3``) is an error
naming its key path, not a silent default. ``options_of(device)`` validates once, when
collect.toml loads and again when a poller or intake is built (devices also come from a
twin's endpoints).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from collectors.base import DeviceConfig
from models.configfile import validation_problems
from models.errors import ConfigError

_CLOSED = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModbusOptions(BaseModel):
    """Options of a Modbus device."""

    model_config = _CLOSED

    unit: int = Field(1, ge=0, le=255)  # Modbus device id (slave address)
    framer: Literal["tcp", "rtu-over-tcp", "rtu"] = "tcp"
    pause_s: float = Field(0.0, ge=0, le=60)  # between requests, for gateways that need it
    retries: int = Field(0, ge=0, le=10)
    reconnect_on_timeout: bool = True
    max_block: int = Field(125, ge=1, le=125)  # registers per read
    max_gap: int = Field(16, ge=0, le=125)  # unread registers a coalesced block may span
    slow_every: int = Field(10, ge=1, le=10_000)  # "slow" points are read every this many polls
    baudrate: int = Field(19200, ge=300, le=4_000_000)  # serial RTU
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    children: list[str] = []  # entity ids a group of points reports as (a busway's racks)
    child_ratings_w: dict[str, float] = {}
    metric_map: dict[str, str] = {}  # renames an entity total, e.g. power.power_w -> site.facility_w

    @field_validator("child_ratings_w")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if not (math.isfinite(x) and x > 0)]
        if bad:
            raise ValueError(f"ratings must be finite and > 0 W: {bad[:5]}")
        return v


class MqttOptions(BaseModel):
    """Options of an MQTT device (a subscription)."""

    model_config = _CLOSED

    topic: str | None = None  # the twin's endpoint filter (informational; the profile subscribes)
    client_id: str | None = Field(None, min_length=1, max_length=128)
    username: str | None = Field(None, min_length=1, max_length=128)
    password_file: str | None = None  # never the password itself in collect.toml
    qos: Literal[0, 1] | None = None
    keepalive_s: int = Field(15, ge=5, le=3600)
    stale_s: float | None = Field(None, gt=0, le=86_400)  # restart the connection after this long silent
    watchdog_s: float = Field(2.0, gt=0, le=600)
    batch_ms: float = Field(5.0, ge=0, le=1000)
    timestamp_max_age_s: float = Field(86_400.0, gt=0, le=10 * 365 * 86_400.0)
    timestamp_max_ahead_s: float = Field(300.0, gt=0, le=365 * 86_400.0)
    max_payload_bytes: int = Field(65_536, gt=0, le=16 << 20)
    max_series: int = Field(100_000, gt=0, le=10_000_000)


def options_of(device: DeviceConfig) -> ModbusOptions | MqttOptions | Any:
    """The validated options of ``device``; a ConfigError naming ``options.KEY`` otherwise."""
    if device.protocol == "snmp":
        from collectors.snmp.client import SnmpOptions

        return SnmpOptions.of(device)
    model: type[BaseModel] = ModbusOptions if device.protocol == "modbus" else MqttOptions
    try:
        return model.model_validate(dict(device.options))
    except ValidationError as exc:
        problems = [(f"options.{k}" if k else "options", m) for k, m in validation_problems(exc)]
        raise ConfigError(device.name, problems) from None


def option_names(protocol: str) -> frozenset[str]:
    """The options a protocol's devices take (empty for an unknown protocol)."""
    if protocol == "snmp":
        from collectors.snmp.client import SnmpOptions

        return frozenset(SnmpOptions.model_fields)
    if protocol == "modbus":
        return frozenset(ModbusOptions.model_fields)
    if protocol == "mqtt":
        return frozenset(MqttOptions.model_fields)
    return frozenset()
