"""The digital twin served as a site: device servers (Modbus, SNMP, MQTT), its GPU boards, and the runner.

The physics and the device encoders are pure and live in ``models.twin``; this package is
the I/O edge that serves them.
"""
