"""Scheduler node names to site servers: the host names of ``[actuation].hostname_template``.

Slurm and Kubernetes name nodes as hosts do (``r01-node-007``, ``gpu-r01-07.dc1.example``),
never as site node ids (``r01/node-007``): the same template the agents use with
``--node-from-hostname`` maps them. A name also matches by its short form (before the first
dot), and a site node id is accepted as it is.
"""

from __future__ import annotations

from models.site import SiteConfig
from models.topology import L_RACK, Topology


class NodeIndex:
    """Name -> server-local node index, for every server of a site (built once: ~1 s at 250k nodes)."""

    def __init__(self, site: SiteConfig, topo: Topology) -> None:
        tmpl = site.actuation.hostname_template
        self._index: dict[str, int] = {}
        self.names: list[str] = []  # host name per server
        k = 0
        for r, rack in enumerate(topo.ids(L_RACK)):
            for i in range(int(topo.rack_nodes[r])):
                host = tmpl.format(rack=rack, index=i)
                self.names.append(host)
                self._index.setdefault(host, k)
                self._index.setdefault(host.split(".", 1)[0], k)
                self._index.setdefault(f"{rack}/node-{i:03d}", k)
                k += 1

    def __len__(self) -> int:
        return len(self.names)

    def get(self, name: str) -> int | None:
        """The server named ``name`` (host name, its short form, or site node id), or None."""
        k = self._index.get(name)
        if k is None and "." in name:
            k = self._index.get(name.split(".", 1)[0])
        return k
