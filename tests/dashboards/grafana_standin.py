"""A STAND-IN for Grafana's HTTP API — not Grafana.

No Grafana server can be installed here, so the provisioning path (grafana-client over real
HTTP) is tested against this stdlib server, which implements only the endpoints
``dashboards/provision.py`` uses, with the status codes and response shapes of Grafana 11's
API documentation: folders by uid, datasources by uid (secrets write-only, reported in
``secureJsonFields``), dashboards by uid with versions, bearer-token auth. It counts the
writes so a test can prove that a second provisioning run writes nothing.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class GrafanaStandIn:
    """Folders, datasources and dashboards of one org, behind a bearer token."""

    def __init__(self, token: str = "glsa_test") -> None:
        self.token = token
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}  # uid -> {"dashboard":..., "folderUid":...}
        self.writes: Counter[str] = Counter()
        self._next_id = 1
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ---- the API ----------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """One request -> (status, JSON body)."""
        parts = [p for p in path.split("?")[0].split("/") if p][1:]  # drop "api"
        with self._lock:
            if parts[:1] == ["folders"]:
                return self._folders(method, parts[1:], body)
            if parts[:1] == ["datasources"]:
                return self._datasources(method, parts[1:], body)
            if parts[:1] == ["dashboards"]:
                return self._dashboards(method, parts[1:], body)
        return 404, {"message": "Not found"}

    def _folders(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "GET" and len(rest) == 1:
            f = self.folders.get(rest[0])
            return (200, f) if f else (404, {"message": "folder not found", "status": "not-found"})
        if method == "POST" and not rest:
            uid = body.get("uid") or f"f{self._id()}"
            if uid in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[uid] = {"id": self._id(), "uid": uid, "title": body["title"], "version": 1}
            self.writes["folder"] += 1
            return 200, self.folders[uid]
        if method == "PUT" and len(rest) == 1 and rest[0] in self.folders:
            f = self.folders[rest[0]]
            f.update(title=body.get("title", f["title"]), version=f["version"] + 1)
            self.writes["folder"] += 1
            return 200, f
        return 404, {"message": "Not found"}

    def _datasources(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "GET" and len(rest) == 2 and rest[0] == "uid":
            ds = self.datasources.get(rest[1])
            if ds is None:
                return 404, {"message": "Data source not found"}
            shown = {k: v for k, v in ds.items() if k != "secureJsonData"}
            shown["secureJsonFields"] = {k: True for k in ds.get("secureJsonData", {})}
            return 200, shown
        if method == "POST" and not rest:
            if body["uid"] in self.datasources or any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            self.datasources[body["uid"]] = {**copy.deepcopy(body), "id": self._id(), "version": 1}
            self.writes["datasource"] += 1
            return 200, {"message": "Datasource added", "id": self.datasources[body["uid"]]["id"]}
        if method == "PUT" and len(rest) == 2 and rest[0] == "uid" and rest[1] in self.datasources:
            old = self.datasources[rest[1]]
            self.datasources[rest[1]] = {**copy.deepcopy(body), "id": old["id"], "version": old["version"] + 1}
            self.writes["datasource"] += 1
            return 200, {"message": "Datasource updated"}
        return 404, {"message": "Not found"}

    def _dashboards(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "GET" and len(rest) == 2 and rest[0] == "uid":
            d = self.dashboards.get(rest[1])
            if d is None:
                return 404, {"message": "Dashboard not found"}
            return 200, {"dashboard": d["dashboard"], "meta": {"folderUid": d["folderUid"], "version":
                                                               d["dashboard"]["version"]}}
        if method == "POST" and rest == ["db"]:
            dash = copy.deepcopy(body["dashboard"])
            uid = dash["uid"]
            old = self.dashboards.get(uid)
            if old is not None and not body.get("overwrite"):
                return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
            if body.get("folderUid") and body["folderUid"] not in self.folders:
                return 400, {"message": "folder not found"}
            dash["id"] = old["dashboard"]["id"] if old else self._id()
            dash["version"] = old["dashboard"]["version"] + 1 if old else 1
            self.dashboards[uid] = {"dashboard": dash, "folderUid": body.get("folderUid")}
            self.writes["dashboard"] += 1
            return 200, {"id": dash["id"], "uid": uid, "status": "success", "version": dash["version"]}
        return 404, {"message": "Not found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    self._send(401, {"message": "invalid API key"})
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                self._send(*standin.handle(self.command, self.path, body))

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
