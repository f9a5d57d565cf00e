"""The real servers the suite relies on start, answer and stop; mosquitto keeps QoS 1 across restarts."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import paho.mqtt.client as mqtt

from testbed.realservers import InfluxDB1, Mosquitto, Snmpd, Snmpsim, VictoriaMetrics, require


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def test_influxdb1_write_and_influxql(influxdb1: InfluxDB1) -> None:
    q = urllib.parse.urlencode({"q": "CREATE DATABASE fixture_check"})
    assert _http("POST", f"{influxdb1.url}/query?{q}")[0] == 200
    status, _ = _http("POST", f"{influxdb1.url}/write?db=fixture_check&precision=ns",
                      b"power,site=s,id=r01 power_w=512000 1780000000000000000")
    assert status == 204
    q = urllib.parse.urlencode({"db": "fixture_check", "q": 'SELECT power_w FROM power WHERE "id"=\'r01\''})
    _, body = _http("GET", f"{influxdb1.url}/query?{q}")
    series = json.loads(body)["results"][0]["series"][0]
    assert series["values"][0][1] == 512000


def test_victoriametrics_accepts_influx_v2_writes(victoriametrics: VictoriaMetrics) -> None:
    status, _ = _http("POST", f"{victoriametrics.url}/api/v2/write?org=o&bucket=b&precision=ns",
                      b"power,site=s,id=r01 power_w=512000 1780000000000000000")
    assert status == 204
    victoriametrics.flush()
    q = urllib.parse.urlencode({"match[]": '{__name__="power_power_w"}', "start": "0"})
    _, body = _http("GET", f"{victoriametrics.url}/api/v1/export?{q}")
    row = json.loads(body.splitlines()[0])
    assert row["metric"]["id"] == "r01" and row["values"] == [512000] and row["timestamps"] == [1780000000000]


def test_snmpd_v2c_and_v3(snmpd: Snmpd) -> None:
    snmpget = require("snmpget")
    env = {**os.environ, "MIBS": ""}
    base = [snmpget, "-Oqv", "-t", "2", f"127.0.0.1:{snmpd.port}", ".1.3.6.1.2.1.1.6.0"]
    r = subprocess.run(base[:1] + ["-v2c", "-c", "public"] + base[1:], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "powerplane-test" in r.stdout
    v3 = ["-v3", "-l", "authPriv", "-u", snmpd.v3_user, "-a", "SHA", "-A", snmpd.v3_auth,
          "-x", "AES", "-X", snmpd.v3_priv]
    r = subprocess.run(base[:1] + v3 + base[1:], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "powerplane-test" in r.stdout, r.stderr


def test_snmpsim_serves_recorded_devices(snmpsim: Snmpsim) -> None:
    walk = require("snmpbulkwalk")
    r = subprocess.run([walk, "-v2c", "-c", "ups-sample", "-On", f"127.0.0.1:{snmpsim.port}",
                        ".1.3.6.1.2.1.33.1.4.4.1.4"], capture_output=True, text=True,
                       env={**os.environ, "MIBS": ""}, timeout=20)
    assert r.returncode == 0, r.stderr
    assert [line.split()[-1] for line in r.stdout.strip().splitlines()] == ["154000", "152500", "155200"]


def test_mosquitto_keeps_queued_qos1_across_restart(mosquitto: Mosquitto) -> None:
    """A persistent session's QoS 1 messages survive a broker restart while the client is away."""
    received: list[int] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received.append(int(msg.payload))
        if len(received) >= 100:
            done.set()

    def subscriber() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persistent-sub", clean_session=False)
        c.on_message = on_message
        c.connect("127.0.0.1", mosquitto.port)
        c.subscribe("drill/#", qos=1)
        return c

    sub = subscriber()
    sub.loop_start()
    time.sleep(0.3)
    sub.loop_stop()
    sub.disconnect()  # away: the broker must queue for it
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    for i in range(100):
        pub.publish("drill/x", str(i), qos=1).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    time.sleep(1.5)  # autosave_interval 1
    mosquitto.restart()
    sub = subscriber()
    sub.loop_start()
    try:
        assert done.wait(10), f"got {len(received)} of 100"
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert sorted(set(received)) == list(range(100))
