"""Finding 9: operator text (paths, values, profile fields, URLs) prints verbatim, never as rich markup.

A ``[/x]`` in a path made ``config check`` and ``profiles show|list|check`` die with a rich
MarkupError traceback, and a ``[bold]`` vanished from the message.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.conftest import DEMO_SITE
from tests.security.conftest import CliResult, no_traceback, run_process

Cli = Callable[[Sequence[str]], CliResult]
MARKUP = ("[/x]", "[bold]", "[red]x[/red]", "[link=file:///etc/passwd]y[/link]")


def markup_dir(tmp_path: Path, tag: str) -> Path:
    """A directory whose path holds ``tag`` (a ``/`` in it makes two levels, which is fine: the text is there)."""
    d = tmp_path / f"site {tag} dir"
    d.mkdir(parents=True)
    return d


@pytest.mark.parametrize("tag", MARKUP)
def test_config_check_prints_a_missing_path_verbatim(cli: Cli, tmp_path: Path, tag: str) -> None:
    path = markup_dir(tmp_path, tag) / f"{tag}.toml"
    code, _out, err = cli(["config", "check", str(path)])
    assert code == 2 and no_traceback(err)
    assert f"{path}: file not found" in err


def test_config_check_prints_a_bad_value_and_its_path_verbatim(cli: Cli, tmp_path: Path) -> None:
    path = markup_dir(tmp_path, "[bold]") / "site.toml"
    path.write_text(DEMO_SITE.read_text().replace('name = "demo-hall"', 'name = "[/x][bold]"'))
    code, _out, err = cli(["config", "check", str(path)])
    assert code == 2 and no_traceback(err)
    assert f"{path}: site.name: String should match pattern" in err and "(got '[/x][bold]')" in err


def test_config_check_ok_line_keeps_the_path(cli: Cli, tmp_path: Path) -> None:
    path = markup_dir(tmp_path, "[bold]") / "[/x].toml"
    path.parent.mkdir()
    shutil.copy(DEMO_SITE, path)
    code, out, _err = cli(["config", "check", str(path)])
    assert code == 0 and f"ok {path}: site demo-hall" in out


def test_as_a_process_no_traceback_reaches_the_operator(tmp_path: Path) -> None:
    path = markup_dir(tmp_path, "[/x]") / "[bold]site.toml"
    path.write_text("[site]\nname = 'x'\ntimezone = '[/x]'\n")
    code, _out, err = run_process(["config", "check", str(path)])
    assert code == 2 and no_traceback(err), err
    assert str(path) in err and "site.timezone: not an IANA time zone name" in err and "'[/x]'" in err


PROFILE = """protocol = "mqtt"
name = "markup-[bold]-profile"
vendor = "[/x]"
description = "[red]d[/red]"
[[subscriptions]]
topic = "t/{point}"
[subscriptions.points.p]
metric = "power.power_w"
"""


@pytest.fixture
def profile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = markup_dir(tmp_path, "[/x]")
    (d / "markup.toml").write_text(PROFILE)
    monkeypatch.setenv("POWERPLANE_PROFILE_PATH", str(d))
    monkeypatch.setenv("COLUMNS", "400")  # tables wide enough that no cell wraps
    return d


def test_profiles_list_prints_profile_text_verbatim(cli: Cli, profile_dir: Path) -> None:
    code, out, err = cli(["profiles", "list"])
    assert code == 0 and no_traceback(err)
    flat = " ".join(out.split())
    assert "markup-[bold]-profile" in flat and "[/x]" in flat and "[red]d[/red]" in flat


def test_profiles_show_prints_its_path_and_name_verbatim(cli: Cli, profile_dir: Path) -> None:
    code, out, err = cli(["profiles", "show", str(profile_dir / "markup.toml"), "--json"])
    assert code == 0 and "markup-[bold]-profile" in out
    code, out, err = cli(["profiles", "show", "markup-[bold]-profile"])
    assert code == 0 and no_traceback(err)
    assert "markup-[bold]-profile" in out


def test_profiles_check_prints_paths_verbatim_ok_and_bad(cli: Cli, profile_dir: Path) -> None:
    bad = profile_dir / "[bold]bad.toml"
    bad.write_text(PROFILE.replace('metric = "power.power_w"', 'metric = "power.power_w"\nscale = nan'))
    code, out, err = cli(["profiles", "check", str(profile_dir / "markup.toml"), str(bad)])
    assert code == 2 and no_traceback(out + err)
    assert f"ok {profile_dir / 'markup.toml'}: mqtt profile markup-[bold]-profile" in out
    assert f"{bad}: subscriptions[0].points.p.scale: Input should be a finite number" in out


def test_profiles_show_of_an_unknown_name_is_a_clear_error(cli: Cli, profile_dir: Path) -> None:
    code, _out, err = cli(["profiles", "show", "no-[/x]-such"])
    assert code == 2 and no_traceback(err) and "no-[/x]-such" in err


def test_collect_with_a_markup_config_path(cli: Cli, tmp_path: Path) -> None:
    path = markup_dir(tmp_path, "[/x]") / "collect.toml"
    code, _out, err = cli(["collect", "--config", str(path)])
    assert code == 2 and no_traceback(err) and f"{path}: file not found" in err


def test_hooks_test_prints_the_url_verbatim(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a-secret-of-at-least-16-bytes")
    code, out, err = cli(["hooks", "test", "--url", "http://127.0.0.1:1/[/x]/[bold]", "--secret-file", str(secret),
                          "--tries", "1"])
    assert code == 1 and no_traceback(out + err)
    assert "not delivered to http://127.0.0.1:1/[/x]/[bold] after 1 tries" in " ".join(out.split())


def test_error_printing_escapes_every_kind_of_error(cli: Cli, tmp_path: Path) -> None:
    # A PowerplaneError that is not a ConfigError, with markup in its message: the store's.
    data = markup_dir(tmp_path, "[/x]")
    (data / "telemetry.sqlite").write_text("not a database")
    code, _out, err = cli(["report", "--data-dir", str(data)])
    assert code != 0 and no_traceback(err)
    assert str(data) in err

