"""The hook dispatcher a site's ``[hooks]`` asks for."""

from __future__ import annotations

from typing import Any

from bus.mqtt import MqttAddress
from controllers.hooks.dispatch import HookDispatcher
from models.site import SiteConfig
from models.topology import L_NODE, L_RACK, Topology


def build_hooks(site: SiteConfig, addr: MqttAddress | None, topo: Topology | None = None,
                secrets: list[bytes] | None = None, **kw: Any) -> HookDispatcher | None:
    """Webhooks, MQTT event topics, Slurm and Kubernetes adapters of ``site``; None if it has none."""
    h = site.hooks
    if not (h.webhooks or h.mqtt_events or h.slurm != "off" or h.kubernetes != "off"):
        return None
    rack_nodes: dict[str, list[str]] | None = None
    if topo is not None:
        rack_nodes = {r: [] for r in topo.ids(L_RACK)}
        for n in topo.ids(L_NODE):
            rack_nodes.setdefault(n.split("/", 1)[0], []).append(n)
    return HookDispatcher(h, site.site.name, mqtt=addr, topic_prefix=site.actuation.topic_prefix,
                          rack_nodes=rack_nodes, secrets=secrets, **kw)
