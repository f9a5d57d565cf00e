"""SNMP collection: profiles (profile.py), read plans (plan.py), decoding (decode.py), pysnmp edge (client.py)."""
