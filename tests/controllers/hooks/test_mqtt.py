"""Hook events on MQTT event topics, against a real mosquitto."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from bus.mqtt import MqttAddress
from controllers.hooks.dispatch import HookDispatcher
from controllers.hooks.payloads import event_id
from models.errors import ConfigError
from models.events import EV_DR_START, EV_MOVE, Event
from models.site import Hooks
from testbed.realservers import Mosquitto

pytestmark = pytest.mark.servers


def test_events_arrive_on_their_topics_qos1_not_retained(mosquitto: Mosquitto, tmp_path: Path) -> None:
    got: list[tuple[str, dict[str, Any], int, bool]] = []
    cond = threading.Condition()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with cond:
            got.append((msg.topic, json.loads(msg.payload), msg.qos, bool(msg.retain)))
            cond.notify_all()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_connect = lambda c, *_a: c.subscribe("pp/demo/events/#", qos=1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    d = HookDispatcher(Hooks(dead_letter=str(tmp_path / "dl.jsonl")), "demo",
                       mqtt=MqttAddress.parse(mosquitto.url), topic_prefix="pp")
    try:
        assert subscribed.wait(10)
        d.start()
        move = Event(1_000, EV_MOVE, "warning", "controller", "move job-7", "job-7", {"value": 9000.0})
        dr = Event(2_000, EV_DR_START, "info", "controller", "DR", "dr-1", {"value": 3.9e6})
        d.submit([move, Event(1_500, "cap_plan", "info", "controller", "plan"), dr],
                 details={id(move): {"action": "drain", "from_racks": ["r01"]}})
        d.close(timeout_s=10)
        with cond:
            assert cond.wait_for(lambda: len(got) >= 2, 10)
        assert [(t, p["id"], q, r) for t, p, q, r in got] == [
            ("pp/demo/events/move_recommendation", event_id("demo", move), 1, False),
            ("pp/demo/events/dr_start", event_id("demo", dr), 1, False)]
        assert got[0][1]["detail"] == {"action": "drain", "from_racks": ["r01"]} and got[1][1]["value"] == 3.9e6
        st = d.stats().sinks["mqtt"]
        assert st.delivered == 2 and st.queue_depth == 0 and st.failed == 0
    finally:
        d.close()
        sub.disconnect()
        sub.loop_stop()


def test_mqtt_address_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    a = MqttAddress.parse("mqtt://u@broker:1884", password_file=pw)
    assert (a.host, a.port, a.username, a.password) == ("broker", 1884, "u", "s3cret") and "s3cret" not in repr(a)
    assert a.url() == "mqtt://u@broker:1884"
    monkeypatch.setenv("POWERPLANE_MQTT_PASSWORD", "from-env")
    assert MqttAddress.parse("mqtt://u@broker").password == "from-env"
    with pytest.raises(ConfigError, match="process list"):  # never a password on a command line
        MqttAddress.parse("mqtt://u:pw@broker:1884")
    assert MqttAddress.parse("mqtts://b").port == 8883 and MqttAddress.parse("mqtts://b").tls
    assert MqttAddress.parse("mqtt://b").port == 1883
    with pytest.raises(ConfigError):
        MqttAddress.parse("http://b")


def test_a_subscription_made_while_the_link_connects_is_sent() -> None:
    """The paho thread's on_connect subscribes every topic it knows; a subscribe() from another
    thread in the middle used to find the link not yet connected and its topic not yet in that
    list, and was never sent (a controller heard no agent status for a whole demo run)."""
    from types import SimpleNamespace

    from bus.mqtt import MqttLink

    link = MqttLink(MqttAddress("127.0.0.1", 1), "race")
    sent: list[str] = []
    link._client.subscribe = lambda topic, qos=0: (sent.append(topic), (0, 1))[1]  # type: ignore[method-assign]
    link.subscribe("powerplane/s/readings/+")

    def paho_subscribe(topic: str, qos: int = 0) -> tuple[int, int]:
        sent.append(topic)
        if topic == "powerplane/s/readings/+":  # another thread subscribes right now
            link.subscribe("powerplane/s/status/+")
        return 0, 1

    link._on_connect(SimpleNamespace(subscribe=paho_subscribe), None, None, SimpleNamespace(is_failure=False), None)
    assert "powerplane/s/status/+" in sent and link.connected.is_set()
