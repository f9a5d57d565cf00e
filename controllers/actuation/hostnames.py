"""Which site node a machine is: ``[actuation].hostname_template`` maps node ids to host names.

A site node id (``r01/node-007``) can never be a host name or a Kubernetes node name (``/``
is not allowed), so the site file says how a node's host is named, e.g. the default
``{rack}-node-{index:03d}`` (``r01-node-007``) or ``gpu-{rack}-{index:02d}.dc1.example``.
``powerplane agent --node-from-hostname`` then finds its own node, and the Kubernetes
DaemonSet passes ``--node-from-hostname`` with the pod's node name as its host name.
"""

from __future__ import annotations

from models.errors import ConfigError
from models.site import SiteConfig
from models.topology import L_RACK, build_topology


def hostname(template: str, rack: str, index: int) -> str:
    """The host name of node ``index`` (0-based, rack order) of ``rack``."""
    return template.format(rack=rack, index=index)


def node_of_host(site: SiteConfig, host: str) -> str:
    """The node id whose host name is ``host`` (the short name also matches a template's FQDN)."""
    topo = build_topology(site)
    tmpl = site.actuation.hostname_template
    short = host.split(".", 1)[0]
    for r, rack in enumerate(topo.ids(L_RACK)):
        for k in range(int(topo.rack_nodes[r])):
            name = hostname(tmpl, rack, k)
            if name == host or name.split(".", 1)[0] == short:
                return f"{rack}/node-{k:03d}"
    raise ConfigError("--node-from-hostname", [("", f"no node of site {site.site.name} is named {host[:80]!r} "
                                                    f"(hostname_template {tmpl!r}, e.g. "
                                                    f"{hostname(tmpl, topo.ids(L_RACK)[0], 0)!r})")])
