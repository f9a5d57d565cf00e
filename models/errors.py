"""The one exception hierarchy of powerplane.

Every error that crosses a package boundary is one of these. Library errors (pymodbus,
pysnmp, paho-mqtt, influxdb-client) are translated at the edge that calls the library,
most specific class first, with ``raise ... from exc``.

    PowerplaneError
    ├── ConfigError            a configuration or profile file is wrong (exit status 2)
    │   └── ProfileError       a device profile is wrong
    ├── DeviceError            a device did not give us its readings
    │   ├── DeviceTimeout      no answer within the device's timeout
    │   ├── DeviceUnreachable  connection refused / reset / no route
    │   ├── DeviceBusy         the device answered "busy" (Modbus exception 6)
    │   └── DeviceProtocolError  the device answered, but wrongly (exception code, bad PDU)
    ├── DecodeError            bytes could not be turned into a value
    ├── StoreError             telemetry could not be written or read
    ├── ControlError           the controller could not produce a safe plan
    ├── TwinError              the digital twin could not start or serve
    └── ProvisionError         Grafana refused or could not be reached while provisioning
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class PowerplaneError(Exception):
    """Base class of every error powerplane raises on purpose."""

    exit_code = 1


class ConfigError(PowerplaneError):
    """A configuration file is invalid; names the file and every offending key path."""

    exit_code = 2

    def __init__(self, path: str | Path, problems: Sequence[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(self.render())

    max_lines = 50  # a file with 5,000 bad racks gets the first 50 problems and a count

    def render(self) -> str:
        """Return one line per problem: ``FILE: KEY.PATH: what is wrong`` (the first ``max_lines``)."""
        lines = [f"{self.path}: {key}: {msg}" if key else f"{self.path}: {msg}"
                 for key, msg in self.problems[:self.max_lines]]
        if len(self.problems) > self.max_lines:
            lines.append(f"{self.path}: ... and {len(self.problems) - self.max_lines:,} more problems")
        return "\n".join(lines)


class ProfileError(ConfigError):
    """A device profile is invalid."""



class DeviceError(PowerplaneError):
    """A device failed to deliver readings; ``device`` names it."""

    reason = "error"

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"{device}: {message}")


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""

    reason = "timeout"


class DeviceUnreachable(DeviceError):
    """The device could not be connected to."""

    reason = "unreachable"


class DeviceBusy(DeviceError):
    """The device reported that it is busy."""

    reason = "busy"


class DeviceProtocolError(DeviceError):
    """The device answered with an error or a malformed response."""

    reason = "protocol"


class DecodeError(PowerplaneError):
    """Raw bytes or a payload could not be decoded into a value."""


class StoreError(PowerplaneError):
    """Telemetry could not be written or read."""





class ControlError(PowerplaneError):
    """The controller could not compute a safe plan."""


class TwinError(PowerplaneError):
    """The digital twin could not start or serve an endpoint."""


class ProvisionError(PowerplaneError):
    """Provisioning dashboards, folder or datasource into Grafana failed."""
