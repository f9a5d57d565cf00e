"""MQTT intake: topic templates and payload parsing (parse.py), paho subscriber bridged into asyncio (client.py)."""
