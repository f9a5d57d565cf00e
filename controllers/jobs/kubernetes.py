"""Kubernetes jobs: pods labelled ``powerplane.io/job`` become jobs, through a watch on the API server.

A job is every pod of one namespace with the same ``powerplane.io/job`` label value (a
distributed training job runs one pod per node): its id is ``<namespace>/<value>``, its nodes
are the ``spec.nodeName`` of those pods that are scheduled and not finished (Pending with a
node, or Running), its ``priority_class`` the pods' ``spec.priorityClassName`` (the site's
``[scheduler]`` rules map it, with the namespace, to a priority). Optional labels:
``powerplane.io/priority: "N"`` (the job asks for a lower priority) and
``powerplane.io/checkpointable: "true"|"false"``. When no pod of a job runs any more, the job
ends.

``PodWatch`` runs the kubernetes client (the ``k8s`` extra, imported only here) on its own
thread: a list, then a watch from the list's ``resourceVersion``, resumed from the last seen
version when a watch ends, and a new list when the server answers 410 Gone or the connection
fails (with backoff). The loop gets the changes as ``Start``/``End`` updates (``drain``).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controllers.jobs.table import JOB_ID_RE, End, Refused, Start, Update
from models.jobs import JobFacts

log = logging.getLogger("powerplane.jobs.kubernetes")

LABEL = "powerplane.io/job"
PRIORITY_LABEL = "powerplane.io/priority"
CHECKPOINT_LABEL = "powerplane.io/checkpointable"
SOURCE = "kubernetes"
WATCH_TIMEOUT_S = 240  # the server ends a watch after this; it is resumed from the last version
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What a pod contributes to its job."""

    job: str  # <namespace>/<label value>
    namespace: str
    name: str
    node: str  # "" when not scheduled, or finished
    priority_class: str
    priority: int | None
    checkpointable: bool | None


def pod_info(raw: Mapping[str, Any]) -> PodInfo | str:
    """The job facts of one pod (a raw API object), or why it cannot be one. Never raises."""
    try:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        labels = meta.get("labels") or {}
        value = str(labels.get(LABEL, ""))
        ns = str(meta.get("namespace") or "default")
        job = f"{ns}/{value}"
        if not value or not JOB_ID_RE.match(job):
            return f"pod {ns}/{meta.get('name')}: job label {value[:80]!r}"
        phase = str(status.get("phase") or "")
        node = str(spec.get("nodeName") or "") if phase in ("Pending", "Running", "") else ""
        prio_text = str(labels.get(PRIORITY_LABEL, ""))
        prio = int(prio_text) if prio_text.isdigit() and len(prio_text) <= 3 else None
        ckpt_text = str(labels.get(CHECKPOINT_LABEL, "")).lower()
        ckpt = {"true": True, "false": False}.get(ckpt_text)
        return PodInfo(job, ns, str(meta.get("name") or ""), node, str(spec.get("priorityClassName") or ""), prio,
                       ckpt)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"pod: {type(exc).__name__}: {exc}"


def job_facts(job: str, pods: list[PodInfo]) -> JobFacts | None:
    """The facts of ``job`` from its pods (None when none of them holds a node)."""
    nodes = tuple(sorted({p.node for p in pods if p.node}))
    if not nodes:
        return None
    first = min(pods, key=lambda p: p.name)
    prios = [p.priority for p in pods if p.priority is not None]
    return JobFacts(job, SOURCE, nodes, namespace=first.namespace, priority_class=first.priority_class,
                    priority=max(prios) if prios else None, checkpointable=first.checkpointable)


class PodWatch:
    """Watches labelled pods and turns them into job updates (see the module docstring)."""

    def __init__(self, api_client: Any, *, namespace: str | None = None, watch_timeout_s: int = WATCH_TIMEOUT_S,
                 maxlen: int = 100_000) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.watch_timeout_s = watch_timeout_s
        self.pods: dict[str, PodInfo] = {}  # uid -> info
        self.emitted: dict[str, JobFacts] = {}
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.errors = 0
        self.last_error = ""
        self.synced = threading.Event()  # the first list was taken in
        self._q: collections.deque[Update] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name="k8s-pod-watch", daemon=True)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> PodWatch:
        """Start the list/watch thread."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching (the thread ends at its next event or read timeout)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout_s)

    def drain(self) -> list[Update]:
        """Updates since the last drain."""
        with self._lock:
            out = list(self._q)
            self._q.clear()
        return out

    # ---- the watch -----------------------------------------------------------------------------
    def _api(self) -> tuple[Any, Any]:
        from kubernetes import client

        v1 = client.CoreV1Api(self.api_client)
        if self.namespace:
            return v1.list_namespaced_pod, {"namespace": self.namespace}
        return v1.list_pod_for_all_namespaces, {}

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        backoff = 1.0
        rv = ""
        while not self._stop.is_set():
            try:
                func, args = self._api()
                if not rv:
                    rv = self._list(func, args)
                self._watch = watch.Watch()
                self.watches += 1
                for ev in self._watch.stream(func, **args, label_selector=LABEL, resource_version=rv,
                                             timeout_seconds=self.watch_timeout_s, allow_watch_bookmarks=True,
                                             _request_timeout=(10, self.watch_timeout_s + 30)):
                    rv = self._event(ev) or rv
                    if self._stop.is_set():
                        break
                backoff = 1.0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("kubernetes: watch expired (410 Gone): listing again")
                    rv = ""
                    continue
                self._failed(f"API server answered {exc.status} {exc.reason}")
                rv = ""
            except Exception as exc:  # connection refused, reset, bad TLS: back off and list again
                self._failed(f"{type(exc).__name__}: {exc}")
                rv = ""
            if not self._stop.is_set():
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _failed(self, why: str) -> None:
        self.errors += 1
        self.last_error = why[:300]
        log.log(logging.ERROR if self.errors == 1 else logging.DEBUG, "kubernetes: pod watch failed (%d): %s",
                self.errors, self.last_error)

    def _list(self, func: Any, args: dict[str, Any]) -> str:
        resp = func(**args, label_selector=LABEL, _preload_content=False, _request_timeout=(10, 60))
        import json

        doc = json.loads(resp.data)
        self.lists += 1
        pods: dict[str, PodInfo] = {}
        bad: list[Update] = []
        for raw in doc.get("items") or []:
            info = pod_info(raw)
            uid = str((raw.get("metadata") or {}).get("uid") or "")
            if isinstance(info, str) or not uid:
                bad.append(Refused(SOURCE, "malformed", info if isinstance(info, str) else "pod without a uid"))
                continue
            pods[uid] = info
        self.pods = pods
        self._emit({p.job for p in pods.values()} | set(self.emitted), bad)
        self.synced.set()
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _event(self, ev: Mapping[str, Any]) -> str:
        kind = ev.get("type")
        raw = ev.get("raw_object") or {}  # the API object as sent (the client's model is not needed)
        rv = str((raw.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            return rv
        self.events += 1
        uid = str((raw.get("metadata") or {}).get("uid") or "")
        info = pod_info(raw)
        if isinstance(info, str) or not uid:
            self._emit(set(), [Refused(SOURCE, "malformed", info if isinstance(info, str) else "pod without a uid")])
            return rv
        old = self.pods.get(uid)
        if kind == "DELETED":
            self.pods.pop(uid, None)
        else:
            self.pods[uid] = info
        self._emit({info.job} | ({old.job} if old else set()), [])
        return rv

    def _emit(self, jobs: set[str], extra: list[Update]) -> None:
        by_job: dict[str, list[PodInfo]] = {}
        for p in self.pods.values():
            if p.job in jobs:
                by_job.setdefault(p.job, []).append(p)
        out = list(extra)
        for job in sorted(jobs):
            facts = job_facts(job, by_job.get(job, []))
            had = self.emitted.get(job)
            if facts is None:
                if had is not None:
                    del self.emitted[job]
                    out.append(End(SOURCE, job))
            elif facts != had:
                self.emitted[job] = facts
                out.append(Start(facts))
        if out:
            with self._lock:
                self._q.extend(out)


def api_client(mode: str) -> Any:
    """A kubernetes ``ApiClient``: ``in-cluster`` (the pod's service account), ``kubeconfig``
    ($KUBECONFIG or ~/.kube/config), or an ``http(s)://`` URL (``kubectl proxy``, a test server)."""
    from kubernetes import client, config

    if mode == "in-cluster":
        config.load_incluster_config()
        return client.ApiClient()
    if mode == "kubeconfig":
        return config.new_client_from_config()
    cfg = client.Configuration()
    cfg.host = mode.rstrip("/")
    return client.ApiClient(cfg)
