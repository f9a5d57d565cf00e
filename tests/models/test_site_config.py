"""Site files: the demo validates; every kind of bad file gives its clear, located error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import ConfigError
from models.site import SiteConfig, load_site
from tests.conftest import DEMO_SITE, ROOT

CASES = sorted((Path(__file__).resolve().parent.parent / "cases" / "config").iterdir())


def test_demo_site_is_valid(demo_site: SiteConfig) -> None:
    assert demo_site.site.name == "demo-hall"
    assert len(demo_site.racks) == 8
    assert {r.loop for r in demo_site.racks} == {"cdu-1", "cdu-2"}
    assert len(demo_site.ups) == 2 and len(demo_site.feeds) == 1
    assert demo_site.twin.demand_response and demo_site.twin.pump_failures


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_site_reports_file_and_key(case: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_site(case / "site.toml")
    text = info.value.render()
    for line in (case / "expected.txt").read_text().splitlines():
        assert f"{case / 'site.toml'}{line}" in text or line in text, text
    assert all(p.startswith(str(case / "site.toml")) for p in text.splitlines())
    assert info.value.exit_code == 2


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_site(tmp_path / "nope.toml")


def test_models_are_frozen(demo_site: SiteConfig) -> None:
    with pytest.raises(Exception, match="frozen"):
        demo_site.site.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("case", ["unknown-key", "negative-limit", "missing-row"])
def test_cli_exits_2_without_traceback(case: str) -> None:
    path = ROOT / "tests" / "cases" / "config" / case / "site.toml"
    r = subprocess.run([sys.executable, "-m", "powerplane", "config", "check", str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    expected = (path.parent / "expected.txt").read_text().strip()
    assert expected.split(":")[0] in r.stderr  # the key path
    assert str(path) in r.stderr


def test_cli_accepts_the_demo() -> None:
    r = subprocess.run([sys.executable, "-m", "powerplane", "config", "check", str(DEMO_SITE)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "4,608 GPUs" in r.stdout
