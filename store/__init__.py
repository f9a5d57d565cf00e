"""Store: telemetry to InfluxDB (with a durable spool) or to an embedded SQLite store, and analytics."""

from store.base import Sink, StoreStats
from store.config import StoreConfig, add_store_arguments, open_sink, store_config_from_args
from store.embedded import EmbeddedStore
from store.influx import InfluxSink
from store.lineproto import encode, encode_events

__all__ = ["EmbeddedStore", "InfluxSink", "Sink", "StoreConfig", "StoreStats", "add_store_arguments",
           "encode", "encode_events", "open_sink", "store_config_from_args"]
