"""Store: telemetry to InfluxDB (with a durable spool) or to an embedded SQLite store, and analytics."""

from powerplane.store.base import Sink, StoreStats
from powerplane.store.config import StoreConfig, add_store_arguments, open_sink, store_config_from_args
from powerplane.store.embedded import EmbeddedStore
from powerplane.store.influx import InfluxSink
from powerplane.store.lineproto import encode, encode_events

__all__ = ["EmbeddedStore", "InfluxSink", "Sink", "StoreConfig", "StoreStats", "add_store_arguments",
           "encode", "encode_events", "open_sink", "store_config_from_args"]
