"""Sharded collection: every device in exactly one shard, the same on every host, minimal moves."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectors.shard import Shard, jump_hash, parse_shard, select, shard_of
from models.errors import ConfigError

NAMES = [f"r{r:04d}-pdu-{x}" for r in range(1700) for x in "ab"] + [f"busway-row-{i:03d}" for i in range(120)]


@dataclass(frozen=True)
class Dev:
    name: str


def test_parse() -> None:
    assert parse_shard("0/4") == Shard(0, 4)
    assert parse_shard(" 3/4 ") == Shard(3, 4)
    assert str(parse_shard("2/7")) == "2/7"


@pytest.mark.parametrize("bad", ["4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", "", "1/99999999", "0/65537"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(bad)


def test_every_device_in_exactly_one_shard_and_balanced() -> None:
    for n in (1, 2, 3, 8, 17):
        devices = [Dev(x) for x in NAMES]
        parts = [select(devices, Shard(i, n)) for i in range(n)]
        names = [d.name for p in parts for d in p]
        assert sorted(names) == sorted(NAMES)  # a partition: none twice, none missing
        sizes = [len(p) for p in parts]
        mean = len(NAMES) / n
        assert max(sizes) - min(sizes) <= 6 * mean ** 0.5 + 1  # within sampling noise


def test_the_assignment_is_a_pure_function_of_the_name() -> None:
    # Frozen values: another host, another Python, another run must compute the same shards.
    assert [shard_of(n, 4) for n in ("r0001-pdu-a", "r0001-pdu-b", "busway-row-000", "site-meter")] == [2, 2, 1, 1]
    assert jump_hash(0, 1) == 0
    assert [jump_hash(k, 10) for k in (1, 2, 3, 2**63)] == [6, 6, 8, 5]


@given(st.integers(1, 200), st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=50, unique=True))
def test_growing_by_one_moves_devices_only_to_the_new_shard(n: int, names: list[str]) -> None:
    for name in names:
        before, after = shard_of(name, n), shard_of(name, n + 1)
        assert 0 <= before < n and 0 <= after < n + 1
        assert after in (before, n)


def test_growing_moves_about_one_in_n_plus_one() -> None:
    moved = sum(shard_of(x, 4) != shard_of(x, 5) for x in NAMES)
    assert abs(moved / len(NAMES) - 1 / 5) < 0.03


def test_explicit_patterns_then_the_shard() -> None:
    devices = [Dev(x) for x in NAMES[:40]] + [Dev("site-meter"), Dev("cdu-1")]
    assert [d.name for d in select(devices, None, ["cdu-*", "site-*"])] == ["site-meter", "cdu-1"]
    only_a = select(devices, None, ["*-pdu-a"])
    assert len(only_a) == 20
    assert Counter(shard_of(d.name, 2) for d in select(only_a, Shard(1, 2))) == Counter({1: len(select(only_a,
                                                                                                    Shard(1, 2)))})
    assert select(devices) == devices
