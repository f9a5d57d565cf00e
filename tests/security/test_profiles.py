"""Finding 16 (profiles): scales are finite numbers and SunSpec scale factors form no chain or cycle.

Profiles accepted SNMP or MQTT ``scale = nan|inf`` (every reading of the point becomes garbage
that no range check can tell from data) and scale-factor cycles.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.modbus.decode import SF_LIMIT
from collectors.modbus.plan import build_plan
from collectors.profiles import BUILTIN_DIR, PROFILE_PARSERS, load_profile
from models.errors import ConfigError, ProfileError
from models.readings import Reason, SeriesRegistry
from tests.security.conftest import CliResult, no_traceback

Cli = Callable[[Sequence[str]], CliResult]
SHIPPED = sorted(BUILTIN_DIR.rglob("*.toml"))


def shipped(name: str) -> tuple[Path, dict[str, Any]]:
    (path,) = [p for p in SHIPPED if p.stem == name]
    return path, tomllib.loads(path.read_text())


def load_data(tmp_path: Path, data: dict[str, Any]) -> object:
    """Parse ``data`` as a profile file would be (header first, then its protocol's parser)."""
    return PROFILE_PARSERS[data["protocol"]](tmp_path / "p.toml", data)


def edited(name: str, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(shipped(name)[1])
    edit(data)
    return data


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e300, True, "10"])
@pytest.mark.parametrize(("name", "key", "where"), [
    ("apc-rpdu2", "scale", lambda d: d["scalars"][0]),
    ("apc-rpdu2", "offset", lambda d: d["scalars"][0]),
    ("grid-json", "scale", lambda d: d["subscriptions"][0]["points"]["limit"]),
    ("grid-json", "offset", lambda d: d["subscriptions"][0]["points"]["limit"]),
    ("cdu-aalc", "scale", lambda d: d["points"][0]),
])
def test_a_scale_that_is_not_a_finite_number_is_refused(tmp_path: Path, name: str, key: str,
                                                        where: Callable[[dict[str, Any]], dict[str, Any]],
                                                        bad: object) -> None:
    data = edited(name, lambda d: where(d).__setitem__(key, bad))
    with pytest.raises(ProfileError) as info:
        load_data(tmp_path, data)
    assert any(k.endswith(f".{key}") for k, _ in info.value.problems), info.value.problems


@pytest.mark.parametrize(("sf_edits", "message"), [
    ({"A_SF": "A_SF"}, "'A_SF' cannot be its own scale factor"),
    ({"A_SF": "V_SF", "V_SF": "A_SF"}, "scale-factor chains and cycles are refused"),
    ({"A_SF": "V_SF"}, "scale-factor chains and cycles are refused"),
])
def test_scale_factor_cycles_and_chains_are_refused(tmp_path: Path, sf_edits: dict[str, str], message: str) -> None:
    def edit(d: dict[str, Any]) -> None:
        for p in d["points"]:
            if p["name"] in sf_edits:
                p["scale_factor"] = sf_edits[p["name"]]

    with pytest.raises(ProfileError) as info:
        load_data(tmp_path, edited("sunspec-meter-int", edit))
    assert any(message in m for _, m in info.value.problems), info.value.problems


def test_a_value_point_is_not_a_scale_factor(tmp_path: Path) -> None:
    data = edited("sunspec-meter-int", lambda d: d["points"][1].__setitem__("scale_factor", "A"))
    with pytest.raises(ProfileError, match="'A' is a value point"):
        load_data(tmp_path, data)


def test_profiles_check_reports_the_bad_scale_and_exits_2(cli: Cli, tmp_path: Path) -> None:
    path, _ = shipped("apc-rpdu2")
    bad = tmp_path / "apc.toml"
    bad.write_text(path.read_text().replace("scale = 10.0", "scale = nan", 1))
    code, out, err = cli(["profiles", "check", str(bad)])
    assert code == 2 and no_traceback(out + err)
    assert f"{bad}: scalars[0].scale: Input should be a finite number" in out


def test_a_device_scale_factor_outside_sunspec_range_is_rejected_not_raised() -> None:
    from collectors.base import DeviceConfig
    from collectors.modbus.decode import PlanDecoder

    prof = load_profile(shipped("sunspec-meter-int")[0])
    reg = SeriesRegistry()
    plan = build_plan(prof, DeviceConfig("m", "modbus", prof.name, "h", 502), reg)  # type: ignore[arg-type]
    dec = PlanDecoder(plan)
    sf_field = next(i for i, f in enumerate(plan.fields) if f.point.name == "A_SF")
    block = plan.fields[sf_field].block
    words = [0] * plan.blocks[block].count
    words[plan.fields[sf_field].offset] = 400  # 10.0 ** 400 raised OverflowError through the poller
    out = dec.decode({block: words})
    assert out.rejected[Reason.DECODE] >= 1 and SF_LIMIT == 10


# ---- property: whatever a profile holds, only a Profile or a ProfileError comes out ---------------

leaf = st.one_of(st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(min_value=-(10**25), max_value=10**25), st.text(max_size=20),
                 st.sampled_from(["A_SF", "V_SF", "power.power_w", "t/{point}", "{x}", "#", "1.3.6.1", "[/x]"]))
value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                      max_size=3), max_leaves=6)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


DOCS = {p.stem: tomllib.loads(p.read_text()) for p in SHIPPED}
EDITS = [(name, path) for name, doc in DOCS.items() for path in paths(doc) if len(path) > 1 or path[:1] != ("protocol",)
         if path]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(EDITS), value), min_size=1, max_size=3))
def test_profile_loaders_never_raise_anything_but_profile_error(
        tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[tuple[str, tuple[Any, ...]], Any]]) -> None:
    name = edits[0][0][0]
    data = copy.deepcopy(DOCS[name])
    for (other, path), new in edits:
        if other != name:
            continue
        node: Any = data
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = new
        except (KeyError, IndexError, TypeError):
            continue
    p = tmp_path_factory.mktemp("prof") / "fuzzed.toml"
    try:
        prof = PROFILE_PARSERS[DOCS[name]["protocol"]](p, data)
    except ConfigError as exc:  # ProfileError is one
        assert exc.exit_code == 2 and exc.render()
        return
    assert prof.describe() is not None
