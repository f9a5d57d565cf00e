"""The controller's side of actuation: publish each plan's caps, hear the agents, verify.

``ControlPlane`` calls, once per period and in this order: ``statuses()`` (agent reports
that arrived since the last period -> lease-fallback events), ``check()`` (deadlines ->
non-compliance events and the servers to account at worst case), then, with the plan,
``apply()`` (signed commands for the nodes that need one).
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from controllers.actuation.link import MqttAddress, MqttLink
from controllers.actuation.messages import AgentStatus, SiteKey
from controllers.actuation.publisher import CapPublisher
from controllers.actuation.verify import Verifier
from controllers.plan import CapPlan
from models.events import Event
from models.site import SiteConfig
from models.topology import Topology

log = logging.getLogger("powerplane.actuation")


class Actuator:
    """Caps out over MQTT, statuses in, verification in between."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, addr: MqttAddress, *,
                 client_id: str | None = None) -> None:
        self.site_id = site.site.name
        self.prefix = site.actuation.topic_prefix
        self.addr = addr
        self.client_id = client_id or f"powerplane-controller-{self.site_id}"
        self.link: MqttLink | None = None
        self.publisher = CapPublisher(site, topo, key, self._send)
        self.verifier = Verifier(self.publisher)
        self.status_topic = f"{self.prefix}/{self.site_id}/status/+"

    def _send(self, topic: str, payload: bytes) -> None:
        if self.link is not None:
            # Retained: an agent that (re)starts gets its newest command at once.
            self.link.publish(topic, payload, qos=1, retain=True)

    async def start(self) -> None:
        """Connect and listen to every agent's status."""
        self.link = MqttLink(self.addr, self.client_id, clean_session=True)
        self.link.subscribe(self.status_topic, qos=1)
        self.link.start()

    def stop(self, clean: bool = True) -> None:
        """Disconnect (``clean=False``: drop the connection as a crashed controller would)."""
        if self.link is not None:
            self.link.stop(clean)
            self.link = None

    def statuses(self) -> list[Event]:
        """Every agent status that arrived since the last call."""
        out: list[Event] = []
        if self.link is None:
            return out
        q = self.link.messages
        while not q.empty():
            topic, payload = q.get_nowait()
            try:
                st = AgentStatus.from_json(payload)
            except ValueError as exc:
                self.verifier.stats.bad_statuses += 1
                log.warning("bad agent status on %s: %s", topic, exc)
                continue
            out += self.verifier.status(st)
        return out

    def check(self, now_ns: int, draw_per_gpu_w: NDArray[np.float64]) -> tuple[list[Event], NDArray[np.float64]]:
        """Verification at ``now_ns`` (see ``Verifier.check``)."""
        return self.verifier.check(now_ns, draw_per_gpu_w)

    def apply(self, plan: CapPlan) -> None:
        """Send the commands this plan needs."""
        self.publisher.publish(plan, plan.ts_ns)
