"""Choosing a sink: ``StoreConfig`` from the command line (or environment), ``open_sink``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from models.clock import Clock
from models.errors import ConfigError
from store.base import Sink

if TYPE_CHECKING:
    from store.influx import EventHook

DEFAULT_DATA_DIR = Path("powerplane-data")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where telemetry goes: the embedded store under ``data_dir``, or InfluxDB at ``influx_url``."""

    data_dir: Path = DEFAULT_DATA_DIR
    influx_url: str | None = None
    influx_token: str = ""
    influx_org: str = ""
    influx_bucket: str = ""
    influx_api: Literal["v1", "v2"] = "v2"  # "v1": InfluxDB 1.x before 1.8 (/write; token "user:pass", bucket "db/rp")
    site: str = ""  # tag of the events the sink writes
    spool_max_bytes: int = 1 << 30
    batch_size: int = 5000
    flush_interval_s: float = 1.0

    @property
    def spool_dir(self) -> Path:
        """The InfluxDB sink's durable spool."""
        return self.data_dir / "spool"


def open_sink(cfg: StoreConfig, *, on_event: EventHook | None = None, clock: Clock | None = None) -> Sink:
    """The sink ``cfg`` asks for: InfluxDB when a URL is given, else the embedded store."""
    from store.embedded import EmbeddedStore
    from store.influx import InfluxSink

    if cfg.influx_url:
        problems = [(f"--influx-{k}", "required with --influx-url")
                    for k, v in (("bucket", cfg.influx_bucket),) if not v]
        if cfg.influx_api == "v2" and not cfg.influx_org:
            problems.append(("--influx-org", "required with --influx-url (any value for InfluxDB 1.8 and "
                                             "VictoriaMetrics)"))
        if problems:
            raise ConfigError("command line", problems)
        return InfluxSink(cfg.influx_url, cfg.influx_token, cfg.influx_org, cfg.influx_bucket,
                          spool_dir=cfg.spool_dir, spool_max_bytes=cfg.spool_max_bytes,
                          batch_size=cfg.batch_size, flush_interval_s=cfg.flush_interval_s,
                          api=cfg.influx_api, site=cfg.site, on_event=on_event, clock=clock)
    return EmbeddedStore(cfg.data_dir)


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir`` and ``--influx-*`` (environment fallbacks ``POWERPLANE_INFLUX_*``)."""
    env = os.environ.get
    g = parser.add_argument_group("telemetry store")
    g.add_argument("--data-dir", type=Path, default=Path(env("POWERPLANE_DATA_DIR", str(DEFAULT_DATA_DIR))),
                   help="embedded store and spool directory (default: %(default)s)")
    g.add_argument("--influx-url", default=env("POWERPLANE_INFLUX_URL"),
                   help="InfluxDB / VictoriaMetrics URL; without it telemetry goes to the embedded store")
    g.add_argument("--influx-token", default=env("POWERPLANE_INFLUX_TOKEN", ""),
                   help="API token (InfluxDB 1.x: user:password); prefer --influx-token-file: argv and the "
                        "environment are easier to leak than a 0600 file")
    g.add_argument("--influx-token-file", default=env("POWERPLANE_INFLUX_TOKEN_FILE"), metavar="FILE",
                   help="file holding the API token (default: $POWERPLANE_INFLUX_TOKEN_FILE)")
    g.add_argument("--influx-org", default=env("POWERPLANE_INFLUX_ORG", ""), help="organization")
    g.add_argument("--influx-bucket", default=env("POWERPLANE_INFLUX_BUCKET", ""),
                   help="bucket (InfluxDB 1.x: database/retention-policy)")
    g.add_argument("--influx-api", choices=("v2", "v1"), default=env("POWERPLANE_INFLUX_API", "v2"),
                   help="write API: v2 (/api/v2/write, default) or v1 (/write, InfluxDB 1.0-1.7)")


def store_config_from_args(args: argparse.Namespace, site: str = "") -> StoreConfig:
    """``StoreConfig`` from arguments added by ``add_store_arguments``."""
    api: Literal["v1", "v2"] = "v1" if args.influx_api == "v1" else "v2"
    token = args.influx_token or ""
    if args.influx_token_file:
        from bus.mqtt import read_secret_file

        token = read_secret_file(args.influx_token_file, "InfluxDB token")
    return StoreConfig(data_dir=Path(args.data_dir), influx_url=args.influx_url or None,
                       influx_token=token, influx_org=args.influx_org or "",
                       influx_bucket=args.influx_bucket or "", influx_api=api, site=site)
