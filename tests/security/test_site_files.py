"""Finding 15: a site file is hostile input; whatever it holds, the loader says what is wrong (ConfigError, exit 2).

Accepted before: ``limit_kw = true`` (1 kW), ``limit_kw = 1e308`` (inf after x1000: no limit),
NaN prices, timezone ``../../etc/passwd``; deep nesting was an internal error; a 50 MB
file ran out of memory.
"""

from __future__ import annotations

import contextlib
import copy
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.configfile import MAX_DEPTH, MAX_FILE_BYTES, read_toml
from models.errors import ConfigError
from models.site import MAX_GPUS, MAX_RACKS, SiteConfig, load_site
from models.topology import build_topology
from tests.conftest import DEMO_SITE
from tests.security.conftest import CliResult, no_traceback

Cli = Callable[[Sequence[str]], CliResult]
DEMO_TEXT = DEMO_SITE.read_text()


def variant(tmp_path: Path, old: str, new: str) -> Path:
    assert old in DEMO_TEXT
    p = tmp_path / "site.toml"
    p.write_text(DEMO_TEXT.replace(old, new, 1))
    return p


@pytest.mark.parametrize(("old", "new", "key", "message"), [
    ("limit_kw = 5300", "limit_kw = true", "feeds[0].limit_kw", "Input should be a valid number (got True)"),
    ("limit_kw = 5300", 'limit_kw = "5300"', "feeds[0].limit_kw", "Input should be a valid number"),
    ("limit_kw = 5300", "limit_kw = 1e308", "feeds[0].limit_kw", "less than or equal to 1000000000"),
    ("limit_kw = 5300", "limit_kw = inf", "feeds[0].limit_kw", "finite number"),
    ("interconnect_limit_kw = 5200", "interconnect_limit_kw = nan", "site.interconnect_limit_kw", "finite number"),
    ("price_base_per_mwh = 95", "price_base_per_mwh = nan", "grid.price_base_per_mwh", "finite number"),
    ("price_base_per_mwh = 95", "price_base_per_mwh = -inf", "grid.price_base_per_mwh", "finite number"),
    ('timezone = "Europe/Amsterdam"', 'timezone = "../../etc/passwd"', "site.timezone", "not an IANA time zone"),
    ('timezone = "Europe/Amsterdam"', 'timezone = "/etc/passwd"', "site.timezone", "not an IANA time zone"),
    ('timezone = "Europe/Amsterdam"', 'timezone = "America"', "site.timezone", "unknown time zone 'America'"),
    ('timezone = "Europe/Amsterdam"', 'timezone = "Europe/Atlantis"', "site.timezone", "unknown time zone"),
    ("seed = 7", "seed = -3", "twin.seed", "greater than or equal to 0"),
    ("seed = 7", "seed = 7\nstart = 9999-01-01T00:00:00Z", "twin.start", "between 1970 and 2200"),
    ("seed = 7", "seed = true", "twin.seed", "valid integer"),
])
def test_nonsense_values_are_config_errors_with_their_key(cli: Cli, tmp_path: Path, old: str, new: str, key: str,
                                                          message: str) -> None:
    p = variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        load_site(p)
    text = info.value.render()
    assert f"{p}: {key}: " in text and message in text, text
    code, _out, err = cli(["config", "check", str(p)])
    assert code == 2 and no_traceback(err) and f"{key}: " in err


def test_a_5000_digit_node_range_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    data = tomllib.loads(DEMO_TEXT)
    data["jobs"][0]["placement"] = ["r01:0-" + "9" * 5000]  # int() of it raised ValueError in the checks
    with pytest.raises(ConfigError) as info:
        load_site(tmp_path / "site.toml", data=data)
    assert info.value.problems[0][0] == "jobs[0].placement[0]"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 5000])
def test_deep_nesting_is_refused_naming_the_limit(cli: Cli, tmp_path: Path, depth: int) -> None:
    p = tmp_path / "site.toml"
    p.write_text(DEMO_TEXT + "\n[extra]\nx = " + "[" * depth + "1" + "]" * depth + "\n")
    with pytest.raises(ConfigError, match=f"nested too deeply \\(at most {MAX_DEPTH} levels\\)"):
        load_site(p)
    code, _out, err = cli(["config", "check", str(p)])
    assert code == 2 and no_traceback(err) and "nested too deeply" in err


def test_deep_dotted_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    p.write_text(DEMO_TEXT + "\n" + ".".join(["k"] * 2000) + " = 1\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_site(p)


def test_a_file_over_the_size_cap_is_refused_before_parsing(cli: Cli, tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    with p.open("w") as f:
        f.write(DEMO_TEXT)
        f.write(("# " + "x" * 1022 + "\n") * (MAX_FILE_BYTES // 1024 + 1))
    with pytest.raises(ConfigError, match=f"larger than {MAX_FILE_BYTES:,} bytes"):
        read_toml(p)
    code, _out, err = cli(["config", "check", str(p)])
    assert code == 2 and no_traceback(err) and "MAX_FILE_BYTES" in err


def racks_text(n: int, rack_type: str = "nvl576") -> str:
    return "".join(f'\n[[racks]]\nid = "x{i}"\nrow = "row-a1"\ntype = "{rack_type}"\nloop = "cdu-1"\n'
                   for i in range(n))


def test_too_many_racks_is_refused_naming_the_limit(cli: Cli, tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    p.write_text(DEMO_TEXT + racks_text(MAX_RACKS))
    with pytest.raises(ConfigError) as info:
        load_site(p)
    assert info.value.problems == [("racks", f"{MAX_RACKS + 8:,} entries; a site holds at most {MAX_RACKS:,}")]
    code, _out, err = cli(["config", "check", str(p)])
    assert code == 2 and no_traceback(err) and f"a site holds at most {MAX_RACKS:,}" in err


def test_too_many_gpus_is_refused_before_any_array_is_built(tmp_path: Path) -> None:
    huge = ('\n[rack_types.huge]\nrated_kw = 600\nnodes = 4096\ngpus_per_node = 64\ngpu_min_w = 200\n'
            'gpu_max_w = 700\n')
    p = tmp_path / "site.toml"
    text = DEMO_TEXT.replace("\n[[racks]]", huge + "\n[[racks]]", 1) + racks_text(20, "huge")
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"GPUs in all; a site holds at most {MAX_GPUS:,}"):
        load_site(p)


def test_problems_are_capped_and_values_cut(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    junk = "z" * 10_000
    p.write_text(DEMO_TEXT + racks_text(200).replace('loop = "cdu-1"\n', f'loop = "cdu-1"\nlimit_kw = "{junk}"\n'))
    with pytest.raises(ConfigError) as info:
        load_site(p)
    text = info.value.render()
    assert len(text.splitlines()) == 51 and text.endswith("more problems")
    assert len(text) < 20_000  # 200 values of 10,000 characters are not echoed whole


# ---- property: whatever a site holds, only a SiteConfig or a ConfigError comes out ----------------

DEMO_DATA = tomllib.loads(DEMO_TEXT)

leaf = st.one_of(
    st.booleans(), st.none().map(lambda _: float("nan")), st.sampled_from([float("inf"), -float("inf"), 1e308, -0.0]),
    st.integers(min_value=-(10**30), max_value=10**30), st.integers(min_value=-5, max_value=5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["[/x]", "../../etc/passwd", "UTC", "r01:0-3", "r01:5-1", "9" * 500]),
)
value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                      max_size=3), max_leaves=8)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


DEMO_PATHS = [p for p in paths(DEMO_DATA) if p]


def mutate(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    d = copy.deepcopy(doc)
    node = d
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = new
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(DEMO_PATHS), value), min_size=1, max_size=4))
def test_site_loader_never_raises_anything_but_config_error(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = DEMO_DATA
    for path, new in edits:
        try:
            data = mutate(data, path, new)
        except (KeyError, IndexError, TypeError):  # an earlier edit removed the path
            continue
    try:
        site = load_site("fuzzed.toml", data=data)
    except ConfigError as exc:
        assert exc.exit_code == 2 and exc.render()
        return
    assert isinstance(site, SiteConfig)
    build_topology(site)  # what loads must also build


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_read_toml_on_any_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "site.toml"
    p.write_bytes(raw)
    with contextlib.suppress(ConfigError):
        load_site(p)
