"""Modbus collection: profiles -> read plan (plan.py) -> pymodbus I/O (client.py) -> values (decode.py)."""
