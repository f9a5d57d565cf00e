"""Provision a running Grafana through its HTTP API (grafana-client): folder, datasource, dashboards.

Idempotent: every object is read first and written only when it differs, so a second run
reports everything ``unchanged`` and bumps no dashboard version. Secrets (the InfluxDB
token or password) are write-only in Grafana; a datasource counts as unchanged when its
visible settings match and every secret is already set (``force_secrets`` rewrites them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dashboards.influxql import DATABASE, DATASOURCE_NAME, DATASOURCE_UID, PLUGIN_ID
from models.errors import ProvisionError

FOLDER_UID = "powerplane"
FOLDER_TITLE = "powerplane"

Outcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class InfluxSource:
    """Where Grafana finds InfluxDB: a v1 database (user/password) or a v2 bucket via DBRP (token)."""

    url: str
    database: str = DATABASE
    user: str | None = None
    password: str | None = None
    token: str | None = None  # InfluxDB 2.x: sent as "Authorization: Token ..." with InfluxQL over DBRP

    def payload(self) -> dict[str, Any]:
        """The datasource object of Grafana's API."""
        json_data: dict[str, Any] = {"dbName": self.database, "httpMode": "POST", "version": "InfluxQL"}
        secure: dict[str, str] = {}
        if self.token:
            json_data["httpHeaderName1"] = "Authorization"
            secure["httpHeaderValue1"] = f"Token {self.token}"
        if self.password:
            secure["password"] = self.password
        out: dict[str, Any] = {"uid": DATASOURCE_UID, "name": DATASOURCE_NAME, "type": PLUGIN_ID, "access": "proxy",
                               "url": self.url, "isDefault": True, "jsonData": json_data}
        if self.user:
            out["user"] = self.user
        if secure:
            out["secureJsonData"] = secure
        return out


@dataclass
class ProvisionReport:
    """What provisioning did to each object."""

    folder: Outcome = "unchanged"
    datasource: Outcome = "unchanged"
    dashboards: dict[str, Outcome] = field(default_factory=dict)

    def changed(self) -> bool:
        """True if anything was created or updated."""
        return (self.folder != "unchanged" or self.datasource != "unchanged"
                or any(v != "unchanged" for v in self.dashboards.values()))


def provision(api: Any, source: InfluxSource, dashboards: Iterable[Mapping[str, Any]], *,
              folder_uid: str = FOLDER_UID, folder_title: str = FOLDER_TITLE,
              force_secrets: bool = False) -> ProvisionReport:
    """Create or update the folder, the datasource and every dashboard through a ``GrafanaApi``."""
    import requests
    from grafana_client.client import GrafanaException

    report = ProvisionReport()
    try:
        report.folder = _folder(api, folder_uid, folder_title)
        report.datasource = _datasource(api, source.payload(), force_secrets)
        for dash in dashboards:
            report.dashboards[str(dash["uid"])] = _dashboard(api, dict(dash), folder_uid)
    except GrafanaException as exc:
        raise ProvisionError(f"Grafana refused: {exc.message} (HTTP {exc.status_code})") from exc
    except (requests.RequestException, OSError) as exc:
        raise ProvisionError(f"cannot reach Grafana: {exc}") from exc
    return report


def _missing(exc: Exception) -> bool:
    return getattr(exc, "status_code", None) == 404


def _folder(api: Any, uid: str, title: str) -> Outcome:
    from grafana_client.client import GrafanaClientError

    try:
        found = api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.folder.create_folder(title, uid=uid)
        return "created"
    if found.get("title") == title:
        return "unchanged"
    api.folder.update_folder(uid, title=title, overwrite=True)
    return "updated"


_DS_KEYS = ("name", "type", "access", "url", "user", "isDefault", "jsonData")


def _datasource(api: Any, want: dict[str, Any], force_secrets: bool) -> Outcome:
    from grafana_client.client import GrafanaClientError

    try:
        found = api.datasource.get_datasource_by_uid(want["uid"])
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.datasource.create_datasource(want)
        return "created"
    same = all(found.get(k) == want.get(k) for k in _DS_KEYS if k in want or found.get(k) not in (None, "", {}))
    secrets_set = all(found.get("secureJsonFields", {}).get(k) for k in want.get("secureJsonData", {}))
    if same and secrets_set and not force_secrets:
        return "unchanged"
    api.datasource.update_datasource_by_uid(want["uid"], want)
    return "updated"


_VOLATILE = ("id", "version")


def _dashboard(api: Any, want: dict[str, Any], folder_uid: str) -> Outcome:
    from grafana_client.client import GrafanaClientError

    try:
        found = api.dashboard.get_dashboard(want["uid"])
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        found = None
    if found is not None:
        have = {k: v for k, v in found.get("dashboard", {}).items() if k not in _VOLATILE}
        ours = {k: v for k, v in want.items() if k not in _VOLATILE}
        if have == ours and found.get("meta", {}).get("folderUid") == folder_uid:
            return "unchanged"
    body = {k: v for k, v in want.items() if k not in _VOLATILE}
    api.dashboard.update_dashboard({"dashboard": {**body, "id": None}, "folderUid": folder_uid, "overwrite": True,
                                    "message": "powerplane dashboards provision"})
    return "created" if found is None else "updated"


def connect(url: str, token: str | None = None, *, user: str | None = None, password: str | None = None,
            timeout_s: float = 10.0) -> Any:
    """A ``GrafanaApi`` for ``url`` with a service-account token (or basic auth)."""
    from grafana_client import GrafanaApi

    credential: str | tuple[str, str] | None = token or ((user, password or "") if user else None)
    return GrafanaApi.from_url(url, credential=credential, timeout=timeout_s)
