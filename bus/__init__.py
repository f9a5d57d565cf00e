"""The edges every process talks over: MQTT (``bus.mqtt``) and a small HTTP server (``bus.http``)."""
