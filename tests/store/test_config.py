"""Choosing a sink from the command line and the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from models.errors import ConfigError
from store.config import StoreConfig, add_store_arguments, open_sink, store_config_from_args
from store.embedded import EmbeddedStore
from store.influx import InfluxSink
from testbed.realservers import VictoriaMetrics


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_store_arguments(p)
    return p.parse_args(argv)


def test_defaults_to_the_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("URL", "TOKEN", "ORG", "BUCKET", "API"):
        monkeypatch.delenv(f"POWERPLANE_INFLUX_{k}", raising=False)
    monkeypatch.delenv("POWERPLANE_DATA_DIR", raising=False)
    assert _parse([]).data_dir == Path("powerplane-data")
    cfg = store_config_from_args(_parse(["--data-dir", str(tmp_path)]), site="demo-hall")
    assert cfg == StoreConfig(data_dir=tmp_path, site="demo-hall")
    sink = open_sink(cfg)
    assert isinstance(sink, EmbeddedStore)
    sink.close()


def test_environment_fallbacks_and_missing_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERPLANE_INFLUX_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("POWERPLANE_INFLUX_TOKEN", "user:pass")
    cfg = store_config_from_args(_parse(["--data-dir", str(tmp_path)]))
    assert (cfg.influx_url, cfg.influx_token) == ("http://127.0.0.1:1", "user:pass")
    with pytest.raises(ConfigError) as err:
        open_sink(cfg)
    assert "--influx-bucket: required with --influx-url" in err.value.render()
    assert "--influx-org" in err.value.render()


@pytest.mark.servers
def test_influx_url_opens_a_spooling_sink(victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    cfg = store_config_from_args(_parse(["--data-dir", str(tmp_path), "--influx-url", victoriametrics.url,
                                         "--influx-org", "o", "--influx-bucket", "b"]))
    sink = open_sink(cfg)
    assert isinstance(sink, InfluxSink) and sink.spool.dir == tmp_path / "spool"
    sink.close()


def test_token_from_a_file_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deploy files point at a 0600 token file (POWERPLANE_INFLUX_TOKEN_FILE), never hold the token."""
    token = tmp_path / "influx-token"
    token.write_text("from-the-file\n")
    token.chmod(0o600)
    monkeypatch.setenv("POWERPLANE_INFLUX_TOKEN", "from-the-environment")
    monkeypatch.setenv("POWERPLANE_INFLUX_TOKEN_FILE", str(token))
    assert store_config_from_args(_parse(["--data-dir", str(tmp_path)])).influx_token == "from-the-file"
    with pytest.raises(ConfigError, match="cannot read the InfluxDB token"):
        store_config_from_args(_parse(["--data-dir", str(tmp_path), "--influx-token-file", str(tmp_path / "no")]))
