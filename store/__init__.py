"""Store: telemetry to InfluxDB (with a durable spool) or to the embedded SQLite store.

Modules: ``base`` (the Sink contract), ``lineproto``, ``spool``, ``influx``, ``embedded`` and
``config`` (choosing a sink from the command line). Nothing is imported here: every process
builds the command line, and only the ones that store load a sink.
"""
