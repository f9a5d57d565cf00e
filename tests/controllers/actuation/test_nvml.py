"""The NVML backend: unit conversion and clamping, the backend against a stand-in NVML, and
the real driver when this machine has one."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.actuation.backends import BoardLimits, GpuBackend
from controllers.actuation.nvml import NvmlBackend, caps_to_mw, mw_to_w, probe, w_to_mw_floor
from models.errors import ControlError


# ---- units and clamping ---------------------------------------------------------------------
@pytest.mark.parametrize(("cap_w", "mw"), [(250.0, 250_000), (250.3, 250_300), (250.0009, 250_000),
                                           (699.9999, 699_999), (0.001, 1), (0.7, 700), (100.0 + 1e-13, 100_000),
                                           (-0.0005, -1)])
def test_watts_round_down_to_whole_milliwatts(cap_w: float, mw: int) -> None:
    assert w_to_mw_floor(cap_w) == mw


def test_caps_are_clamped_into_each_gpus_range() -> None:
    limits, clamped = caps_to_mw([50.0, 300.5, 800.0, 700.0004], [100_000, 100_000, 200_000, 200_000],
                                 [700_000, 700_000, 700_000, 700_000])
    assert limits == [100_000, 300_500, 700_000, 700_000]
    assert clamped == [True, False, True, False]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_caps_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"GPU 1: power .* is not a finite number"):
        caps_to_mw([300.0, bad], [100_000] * 2, [700_000] * 2)


def test_mismatched_lengths_and_empty_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="2 caps for 1 minima"):
        caps_to_mw([300.0, 300.0], [100_000], [700_000])
    with pytest.raises(ValueError, match=r"range 700000\.\.100000 mW is empty"):
        caps_to_mw([300.0], [700_000], [100_000])


def test_milliwatts_to_watts() -> None:
    assert mw_to_w(700_000) == 700.0
    assert mw_to_w(250_300) == 250.3


@given(caps=st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4),
                     min_size=1, max_size=8),
       lo=st.integers(0, 800_000), span=st.integers(0, 800_000))
def test_limit_is_in_range_and_never_above_the_cap_unless_raised_to_the_minimum(
        caps: list[float], lo: int, span: int) -> None:
    hi = lo + span
    limits, clamped = caps_to_mw(caps, [lo] * len(caps), [hi] * len(caps))
    for cap_w, mw, was_clamped in zip(caps, limits, clamped, strict=True):
        assert lo <= mw <= hi
        exact_mw = Decimal(repr(cap_w)) * 1000  # the cap as its decimal (and JSON) text
        assert mw <= exact_mw or (was_clamped and mw == lo)
        if not was_clamped:
            assert exact_mw - 1 < mw  # rounding loses less than 1 mW


@given(mw=st.integers(0, 2_000_000))
def test_milliwatts_round_trip_through_watts(mw: int) -> None:
    assert w_to_mw_floor(mw_to_w(mw)) == mw


# ---- the backend against a stand-in NVML ------------------------------------------------------
@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    min_mw: int = 200_000
    max_mw: int = 700_000
    limit_mw: int = 700_000
    other_cap_mw: int = 10**9  # a tighter limiter outside NVML's software limit (e.g. out-of-band)
    power_mw: int | None = 85_123  # None: the board does not report power
    lost: bool = False


class FakeNvml(ModuleType):
    """pynvml's surface that the backend uses, with pynvml's own error classes."""

    def __init__(self, real: ModuleType, gpus: list[FakeGpu], *, root: bool = True,
                 init_error: type[Exception] | None = None) -> None:
        super().__init__("pynvml")
        for k in dir(real):
            if k.startswith("NVMLError") or k == "NVMLLibraryMismatchError":
                setattr(self, k, getattr(real, k))
        self.gpus, self.root, self.init_error = gpus, root, init_error
        self.sets: list[tuple[int, int]] = []
        self.inits = 0

    def _gpu(self, i: int) -> FakeGpu:
        g = self.gpus[i]
        if g.lost:
            raise self.NVMLError_GpuIsLost()
        return g

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error()
        self.inits += 1

    def nvmlShutdown(self) -> None:
        if self.inits == 0:
            raise self.NVMLError_Uninitialized()
        self.inits -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < len(self.gpus):
            raise self.NVMLError_InvalidArgument()
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu(h).name

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        g = self._gpu(h)
        return [g.min_mw, g.max_mw]

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return self._gpu(h).limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, h: int, mw: int) -> None:
        g = self._gpu(h)
        if not self.root:
            raise self.NVMLError_NoPermission()
        if not g.min_mw <= mw <= g.max_mw:
            raise self.NVMLError_InvalidArgument()
        g.limit_mw = mw
        self.sets.append((h, mw))

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        g = self._gpu(h)
        return min(g.limit_mw, g.other_cap_mw)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        g = self._gpu(h)
        if g.power_mw is None:
            raise self.NVMLError_NotSupported()
        return g.power_mw


@pytest.fixture
def real_pynvml() -> ModuleType:
    """The installed nvidia-ml-py (its error classes are the ones the backend must translate)."""
    nv: ModuleType = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (the nvml extra)")
    return nv


def fake(monkeypatch: pytest.MonkeyPatch, real: ModuleType, gpus: list[FakeGpu], **kw: Any) -> FakeNvml:
    nv = FakeNvml(real, gpus, **kw)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    return nv


def test_backend_satisfies_the_protocol() -> None:
    backend: GpuBackend = NvmlBackend()
    assert backend.name == "nvml"


def test_open_apply_read_close(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    nv = fake(monkeypatch, real_pynvml, [FakeGpu(), FakeGpu(min_mw=100_000, max_mw=400_000, limit_mw=400_000,
                                                               power_mw=None)])

    async def run() -> None:
        b = NvmlBackend()
        assert await b.open() == BoardLimits(min_w=(200.0, 100.0), max_w=(700.0, 400.0))
        assert await b.apply([450.3009, 399.9999]) == (450.3, 399.999)
        assert nv.sets == [(0, 450_300), (1, 399_999)]
        reading = await b.read()
        assert reading.enforced_w == (450.3, 399.999)
        assert reading.power_w == (85.123, None)  # GPU 1 does not report power
        await b.close()
        await b.close()
        assert nv.inits == 0

    asyncio.run(run())


def test_a_limit_already_set_is_not_set_again(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    # GPU 1 is held lower by another limiter: its enforced limit never reaches the target,
    # but its NVML limit does, so it is set once only.
    nv = fake(monkeypatch, real_pynvml, [FakeGpu(), FakeGpu(other_cap_mw=300_000)])

    async def run() -> None:
        b = NvmlBackend()
        await b.open()
        assert await b.apply([700.0, 500.0]) == (700.0, 300.0)
        assert nv.sets == [(1, 500_000)]
        assert await b.apply([700.0, 500.0]) == (700.0, 300.0)
        assert nv.sets == [(1, 500_000)]
        await b.close()

    asyncio.run(run())


def test_caps_outside_the_range_are_clamped_not_refused(monkeypatch: pytest.MonkeyPatch,
                                                        real_pynvml: ModuleType) -> None:
    nv = fake(monkeypatch, real_pynvml, [FakeGpu(), FakeGpu()])

    async def run() -> None:
        b = NvmlBackend()
        await b.open()
        assert await b.apply([199.6, 700.4]) == (200.0, 700.0)
        assert nv.sets == [(0, 200_000)]
        with pytest.raises(ValueError, match="not a finite number"):
            await b.apply([math.nan, 300.0])
        await b.close()

    asyncio.run(run())


def test_setting_without_root_says_so(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    fake(monkeypatch, real_pynvml, [FakeGpu()], root=False)

    async def run() -> None:
        b = NvmlBackend()
        await b.open()
        with pytest.raises(ControlError, match=r"GPU 0 \(NVIDIA H100 80GB HBM3\): setting the power limit to "
                                               r"300 W needs root") as ei:
            await b.apply([300.0])
        assert isinstance(ei.value.__cause__, real_pynvml.NVMLError_NoPermission)
        await b.close()

    asyncio.run(run())


def test_one_lost_gpu_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    nv = fake(monkeypatch, real_pynvml, [FakeGpu(), FakeGpu(), FakeGpu()])

    async def run() -> None:
        b = NvmlBackend()
        await b.open()
        nv.gpus[1].lost = True
        with pytest.raises(ControlError, match=r"GPU 1 .*GPU is lost"):
            await b.apply([300.0, 300.0, 300.0])
        assert nv.sets == [(0, 300_000), (2, 300_000)]
        with pytest.raises(ControlError, match=r"GPU 1 .*reading the enforced limit failed"):
            await b.read()
        await b.close()

    asyncio.run(run())


def test_selected_gpus_only(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    nv = fake(monkeypatch, real_pynvml, [FakeGpu(), FakeGpu(max_mw=400_000, limit_mw=400_000), FakeGpu()])

    async def run() -> None:
        b = NvmlBackend([1])
        assert await b.open() == BoardLimits(min_w=(200.0,), max_w=(400.0,))
        assert await b.apply([350.0]) == (350.0,)
        assert nv.sets == [(1, 350_000)]
        await b.close()
        with pytest.raises(ControlError, match="no GPU 3, 5: this node has 3"):
            await NvmlBackend([3, 1, 5]).open()
        assert nv.inits == 0  # a failed open shuts NVML down again

    asyncio.run(run())
    with pytest.raises(ValueError, match="repeat"):
        NvmlBackend([0, 0])
    with pytest.raises(ValueError, match="no GPU indices"):
        NvmlBackend([])


def test_a_board_that_cannot_cap(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    nv = fake(monkeypatch, real_pynvml, [FakeGpu()])

    def unsupported(h: int) -> list[int]:
        raise real_pynvml.NVMLError_NotSupported()

    monkeypatch.setattr(nv, "nvmlDeviceGetPowerManagementLimitConstraints", unsupported)
    with pytest.raises(ControlError, match=r"GPU 0 \(NVIDIA H100 80GB HBM3\): reading the power-limit range is "
                                           r"not supported by this board, so NVML cannot cap its power"):
        asyncio.run(NvmlBackend().open())
    assert nv.inits == 0


@pytest.mark.parametrize("cls", ["NVMLError_DriverNotLoaded", "NVMLError_LibraryNotFound"])
def test_no_driver(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType, cls: str) -> None:
    fake(monkeypatch, real_pynvml, [], init_error=getattr(real_pynvml, cls))
    with pytest.raises(ControlError, match=r"^NVML: no NVIDIA driver: ") as ei:
        asyncio.run(NvmlBackend().open())
    assert isinstance(ei.value.__cause__, getattr(real_pynvml, cls))
    assert probe().startswith("NVML: no NVIDIA driver: ")


def test_probe_lists_the_gpus(monkeypatch: pytest.MonkeyPatch, real_pynvml: ModuleType) -> None:
    fake(monkeypatch, real_pynvml, [FakeGpu(), FakeGpu(power_mw=None)])
    assert probe([0, 1, 4]).splitlines() == [
        "NVML driver 570.86.15: 2 GPU(s)",
        "  GPU 0: NVIDIA H100 80GB HBM3, limit range 200..700 W, enforced 700 W, drawing 85.1 W",
        "  GPU 1: NVIDIA H100 80GB HBM3, limit range 200..700 W, enforced 700 W, drawing "
        "unknown (reading power usage is not supported by this board)",
        "  GPU 4: not present",
    ]


def test_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(ControlError, match=r"nvidia-ml-py is not installed: pip install 'powerplane\[nvml\]'"):
        asyncio.run(NvmlBackend().open())
    assert "nvidia-ml-py is not installed" in probe()


# ---- the real driver ------------------------------------------------------------------------------
@pytest.fixture
def nvml_driver(real_pynvml: ModuleType) -> Iterator[ModuleType]:
    """pynvml with a working driver, or a skip that says why there is none."""
    try:
        real_pynvml.nvmlInit()
    except real_pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver: {exc}")
    yield real_pynvml
    real_pynvml.nvmlShutdown()


def test_real_gpus(nvml_driver: ModuleType) -> None:
    async def run() -> None:
        b = NvmlBackend()
        limits = await b.open()
        try:
            reading = await b.read()
            assert len(reading.enforced_w) == len(limits.min_w) > 0
            for lo, hi, enf in zip(limits.min_w, limits.max_w, reading.enforced_w, strict=True):
                assert 0 < lo <= hi
                assert enf is None or enf <= hi
            # Re-apply each GPU's own limit: no set is needed, so no root and no change.
            handles = [nvml_driver.nvmlDeviceGetHandleByIndex(i) for i in range(len(limits.min_w))]
            now = [mw_to_w(nvml_driver.nvmlDeviceGetPowerManagementLimit(h)) for h in handles]
            assert len(await b.apply(now)) == len(now)
        finally:
            await b.close()

    asyncio.run(run())
    assert "GPU 0:" in probe()


def test_open_without_a_driver_is_our_error(real_pynvml: ModuleType) -> None:
    try:
        real_pynvml.nvmlInit()
    except real_pynvml.NVMLError:
        pass
    else:
        real_pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    with pytest.raises(ControlError, match=r"^NVML: no NVIDIA driver: ") as ei:
        asyncio.run(NvmlBackend().open())
    assert isinstance(ei.value.__cause__, real_pynvml.NVMLError)
