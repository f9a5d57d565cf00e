"""Acting on caps: signed cap commands over MQTT, the node agent and its GPU backends,
and the controller's verification that nodes follow their caps."""
