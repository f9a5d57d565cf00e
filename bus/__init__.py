"""The message bus every process talks over: the MQTT edge."""
