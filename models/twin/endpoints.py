"""Where a twin device listens: the endpoint inventory ``powerplane twin --endpoints-out`` writes and
``collectors.config`` reads (pure data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Endpoint:
    """Where one twin device listens, and how to address it."""

    device: str
    protocol: Literal["modbus", "snmp", "mqtt"]
    model: str
    level: str
    entity: str
    host: str
    port: int
    unit: int | None = None  # Modbus device id
    community: str | None = None  # SNMP v2c community / v3 context
    topic: str | None = None  # MQTT topic filter
    username: str | None = None  # MQTT account (its password never goes in a file like this one)

    def url(self) -> str:
        """A URL an operator can paste into a client."""
        if self.protocol == "modbus":
            return f"modbus://{self.host}:{self.port}/{self.unit}"
        if self.protocol == "snmp":
            return f"snmp://{self.community}@{self.host}:{self.port}"
        return f"mqtt://{self.host}:{self.port}/{self.topic}"
