"""Pods labelled powerplane.io/job become jobs: the real kubernetes client against a fake API server that
speaks the watch protocol (a list with a resourceVersion, then chunked JSON-lines watch streams that end
after timeoutSeconds and are resumed; 410 Gone forces a new list)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from controllers.jobs.kubernetes import LABEL, PodWatch, api_client, pod_info
from controllers.jobs.names import NodeIndex
from controllers.jobs.table import End, JobTable, Start, Update
from models.site import SiteConfig
from models.topology import Topology

pytest.importorskip("kubernetes")


def pod(name: str, job: str, node: str = "", phase: str = "Running", ns: str = "ml", uid: str | None = None,
        **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}",
                         "labels": {LABEL: job, **labels}},
            "spec": {"nodeName": node or None, "priorityClassName": "powerplane-high", "containers": []},
            "status": {"phase": phase}}


class FakeApiServer:
    """GET /api/v1/pods: a PodList, or with watch=true a chunked stream of watch events."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = {p["metadata"]["uid"]: p for p in pods}
        self.rv = 100
        self.events: list[tuple[int, dict[str, Any]]] = []  # (resourceVersion, event)
        self.cond = threading.Condition()
        self.lists = 0
        self.watches: list[dict[str, list[str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                if url.path != "/api/v1/pods" or q.get("labelSelector") != [LABEL]:
                    self.send_error(404)
                    return
                if q.get("watch", ["false"])[0].lower() == "true":
                    fake.watches.append(q)
                    self._watch(int(q.get("resourceVersion", ["0"])[0] or 0), float(q["timeoutSeconds"][0]))
                    return
                with fake.cond:
                    fake.lists += 1
                    body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                                       "metadata": {"resourceVersion": str(fake.rv)},
                                       "items": list(fake.pods.values())}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, since: int, timeout_s: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                end = time.monotonic() + min(timeout_s, 3.0)
                sent = since
                while time.monotonic() < end:
                    with fake.cond:
                        todo = [(rv, ev) for rv, ev in fake.events if rv > sent]
                        if not todo:
                            fake.cond.wait(0.1)
                            continue
                    for rv, ev in todo:
                        self._chunk(json.dumps(ev).encode() + b"\n")
                        sent = rv
                        if ev["type"] == "ERROR":
                            end = 0.0
                            break
                self._chunk(b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def push(self, kind: str, obj: dict[str, Any]) -> None:
        with self.cond:
            self.rv += 1
            if kind == "ERROR":
                self.events.append((self.rv, {"type": "ERROR", "object": obj}))
            else:
                obj = json.loads(json.dumps(obj))
                obj["metadata"]["resourceVersion"] = str(self.rv)
                if kind == "DELETED":
                    self.pods.pop(obj["metadata"]["uid"], None)
                else:
                    self.pods[obj["metadata"]["uid"]] = obj
                self.events.append((self.rv, {"type": kind, "object": obj}))
            self.cond.notify_all()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    srv = FakeApiServer([pod("train-0", "train", "r06-node-072"), pod("train-1", "train", phase="Pending"),
                         pod("done-0", "done", "r06-node-090", phase="Succeeded")])
    yield srv
    srv.stop()


def wait_for(watch: PodWatch, got: list[Update], pred: Callable[[list[Update]], bool], what: str) -> None:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        got.extend(watch.drain())
        if pred(got):
            return
        time.sleep(0.05)
    pytest.fail(f"{what}: {got} (errors {watch.errors}: {watch.last_error})")


def test_pod_info_reads_labels_and_placement() -> None:
    p = pod_info(pod("a", "train", "r06-node-072", **{"powerplane.io/priority": "9",
                                                      "powerplane.io/checkpointable": "false"}))
    assert not isinstance(p, str)
    assert (p.job, p.node, p.priority, p.checkpointable, p.priority_class) == ("ml/train", "r06-node-072", 9, False,
                                                                               "powerplane-high")
    assert not isinstance(done := pod_info(pod("b", "x", "n1", phase="Succeeded")), str) and done.node == ""
    assert isinstance(pod_info(pod("c", "no spaces allowed")), str)
    assert isinstance(pod_info({"metadata": 5}), str)


def test_a_watch_turns_pods_into_jobs(fake: FakeApiServer, demo_site: SiteConfig, demo_topo: Topology) -> None:
    watch = PodWatch(api_client(fake.url), watch_timeout_s=2).start()
    got: list[Update] = []
    try:
        wait_for(watch, got, lambda g: len(g) >= 1, "the list's job")
        assert got == [Start(got[0].facts)] and isinstance(got[0], Start)  # "done" has no running pod: no job
        assert got[0].facts.id == "ml/train" and got[0].facts.nodes == ("r06-node-072",)
        fake.push("MODIFIED", pod("train-1", "train", "r06-node-073"))
        wait_for(watch, got, lambda g: len(g) >= 2, "the second pod scheduled")
        assert isinstance(got[1], Start) and got[1].facts.nodes == ("r06-node-072", "r06-node-073")
        fake.push("ADDED", pod("odd", "bad label!"))
        fake.push("DELETED", pod("train-0", "train", "r06-node-072"))
        fake.push("DELETED", pod("train-1", "train", "r06-node-073"))
        wait_for(watch, got, lambda g: any(isinstance(u, End) for u in g), "the job's end")
        assert got[-1] == End("kubernetes", "ml/train")
        # a 410 Gone makes the watch list again; a job added meanwhile shows up
        fake.push("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})
        fake.push("ADDED", pod("serve-0", "serve", "r06-node-100", ns="prod"))
        wait_for(watch, got, lambda g: any(isinstance(u, Start) and u.facts.id == "prod/serve" for u in g),
                 "the job after the relist")
        assert fake.lists >= 2
        assert all(q["resourceVersion"][0] for q in fake.watches)  # every watch started from a version
        # in the table: the PriorityClass rule of the demo site gives priority 2
        t = JobTable(demo_site, demo_topo, NodeIndex(demo_site, demo_topo))
        t.apply(got, 0)
        assert list(t.jobs) == ["prod/serve"] and t.jobs["prod/serve"].terms.priority == 2
        assert t.rejected[("kubernetes", "malformed")] >= 1  # the odd pod (again at each list)
        assert watch.errors == 0  # the 410 was a relist, not a failure
    finally:
        watch.stop()


def test_an_unreachable_api_server_is_retried_and_counted() -> None:
    watch = PodWatch(api_client("http://127.0.0.1:9"), watch_timeout_s=1).start()
    try:
        end = time.monotonic() + 20
        while watch.errors == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert watch.errors >= 1 and not watch.synced.is_set()
    finally:
        watch.stop()
