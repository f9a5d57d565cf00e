"""Sense: Modbus, SNMP and MQTT collectors that turn devices into validated reading batches."""
