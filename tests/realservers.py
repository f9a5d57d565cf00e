"""Moved to ``testbed/realservers.py`` so that the benchmarks need not import ``tests/``.

This name stays for imports written before the move; new code imports ``testbed.realservers``.
"""

from testbed.realservers import (
    InfluxDB1,
    Mosquitto,
    Server,
    Snmpd,
    Snmpsim,
    VictoriaMetrics,
    free_port,
    require,
    wait_http,
    wait_tcp,
)

__all__ = ["InfluxDB1", "Mosquitto", "Server", "Snmpd", "Snmpsim", "VictoriaMetrics", "free_port", "require",
           "wait_http", "wait_tcp"]
