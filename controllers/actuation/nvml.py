"""The NVML backend: GPU power limits through NVIDIA's management library (nvidia-ml-py).

``pynvml`` is imported when a backend opens (and by ``probe``), so this module imports
on machines without the package or a driver; ``open`` then fails with a ``ControlError``
that says what is missing. NVML counts power in milliwatts; the backend speaks watts.
Every NVML call blocks (a limit set takes milliseconds), so each operation runs its calls
for all GPUs in one worker thread. Setting a limit needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import ModuleType
from typing import Any

from controllers.actuation.backends import BoardLimits, GpuReading
from models.errors import ControlError, PowerplaneError

INSTALL_HINT = "pip install 'powerplane[nvml]' (nvidia-ml-py)"


# ---- units and clamping (pure) ------------------------------------------------------------
def w_to_mw_floor(power_w: float) -> int:
    """Watts to whole milliwatts, rounded down exactly; ``ValueError`` on NaN or infinity."""
    if not math.isfinite(power_w):
        raise ValueError(f"power {power_w!r} W is not a finite number")
    # Round the decimal the float stands for (its shortest repr, which is also what the cap
    # command's JSON carries), not the float: 250.3 * 1000 is 250299.99999999997, and the
    # float nearest 0.7 W is below 0.7, yet both mean a whole number of mW. This keeps
    # mW -> W -> mW exact, so re-applying a limit read back from NVML never sets it again.
    return math.floor(Decimal(repr(power_w)) * 1000)


def mw_to_w(power_mw: int) -> float:
    """Milliwatts (as NVML reports them) to watts."""
    return power_mw / 1000.0


def caps_to_mw(caps_w: Sequence[float], min_mw: Sequence[int], max_mw: Sequence[int]) -> tuple[list[int], list[bool]]:
    """Caps in W to NVML limits in mW: rounded down, clamped into each GPU's range; also which were clamped.

    Rounding down means a limit is never set above its cap; only a cap below the board's
    minimum is raised (to the minimum), and that GPU is flagged as clamped. The agent has
    already refused caps more than rounding outside the range (``messages.BOUNDS_TOL_W``).
    """
    if not len(caps_w) == len(min_mw) == len(max_mw):
        raise ValueError(f"{len(caps_w)} caps for {len(min_mw)} minima and {len(max_mw)} maxima")
    limits_mw: list[int] = []
    clamped: list[bool] = []
    for i, (cap_w, lo, hi) in enumerate(zip(caps_w, min_mw, max_mw, strict=True)):
        if lo > hi:
            raise ValueError(f"GPU {i}: limit range {lo}..{hi} mW is empty")
        try:
            mw = w_to_mw_floor(cap_w)
        except ValueError as exc:
            raise ValueError(f"GPU {i}: {exc}") from exc
        limit = min(max(mw, lo), hi)
        limits_mw.append(limit)
        clamped.append(limit != mw)
    return limits_mw, clamped


# ---- NVML errors, translated here and nowhere else ----------------------------------------
def _translate(nv: ModuleType, exc: Exception, where: str, action: str) -> PowerplaneError:
    """One ``ControlError`` for an NVML failure of ``action`` on ``where``."""
    return ControlError(f"{where}: {_why(nv, exc, action)}")


def _why(nv: ModuleType, exc: Exception, action: str) -> str:
    """Why ``action`` failed, in words an operator can act on; most specific NVML class first."""
    if isinstance(exc, nv.NVMLError_NoPermission):
        return f"{action} needs root (or CAP_SYS_ADMIN): run the agent as root"
    if isinstance(exc, nv.NVMLError_NotSupported):
        # Every action on a limit path names the limit; a board without one cannot be capped.
        cannot_cap = ", so NVML cannot cap its power" if "limit" in action else ""
        return f"{action} is not supported by this board{cannot_cap}"
    if isinstance(exc, nv.NVMLError_LibraryNotFound | nv.NVMLError_DriverNotLoaded):
        return f"no NVIDIA driver: {exc}"
    if isinstance(exc, nv.NVMLError_GpuIsLost):
        return f"{action} failed: the GPU fell off the bus (GPU is lost)"
    if isinstance(exc, nv.NVMLError_InvalidArgument):
        return f"{action} was refused as an invalid argument"
    if isinstance(exc, _nvml_errors(nv)[1:]):
        return f"nvidia-ml-py does not match the driver's NVML: {exc}"
    return f"{action} failed: {exc}"


def _nvml_errors(nv: ModuleType) -> tuple[type[Exception], ...]:
    """NVML's error base class, then its library-mismatch error where the version has one."""
    # NVMLLibraryMismatchError (not an NVMLError) is missing from older releases (12.535.77).
    mismatch = getattr(nv, "NVMLLibraryMismatchError", None)
    return (nv.NVMLError,) if mismatch is None else (nv.NVMLError, mismatch)


def _import_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise ControlError(f"NVML backend: nvidia-ml-py is not installed: {INSTALL_HINT}") from exc


# ---- the backend --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Gpu:
    index: int
    name: str
    handle: Any  # an NVML device handle (ctypes pointer)
    min_mw: int
    max_mw: int

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.name})"


class NvmlBackend:
    """Sets and reads the power limits of this node's NVIDIA GPUs through NVML."""

    name = "nvml"

    def __init__(self, gpu_indices: Sequence[int] | None = None) -> None:
        if gpu_indices is not None:
            if not gpu_indices:
                raise ValueError("no GPU indices given (None means every GPU)")
            if any(i < 0 for i in gpu_indices):
                raise ValueError(f"GPU indices must be >= 0, got {list(gpu_indices)}")
            if len(set(gpu_indices)) != len(gpu_indices):
                raise ValueError(f"GPU indices repeat: {list(gpu_indices)}")
        self._indices = None if gpu_indices is None else tuple(gpu_indices)
        self._nv: ModuleType | None = None
        self._gpus: tuple[_Gpu, ...] = ()
        # One NVML operation at a time: a close must not shut NVML down under a running apply.
        self._lock = asyncio.Lock()

    async def open(self) -> BoardLimits:
        """Initialise NVML, take the GPUs' handles and return their limit ranges."""
        if self._nv is not None:
            raise RuntimeError("NVML backend is already open")
        nv = _import_pynvml()
        self._gpus = await asyncio.to_thread(self._open_sync, nv)
        self._nv = nv
        return BoardLimits(min_w=tuple(mw_to_w(g.min_mw) for g in self._gpus),
                           max_w=tuple(mw_to_w(g.max_mw) for g in self._gpus))

    def _open_sync(self, nv: ModuleType) -> tuple[_Gpu, ...]:
        try:
            nv.nvmlInit()
        except _nvml_errors(nv) as exc:
            raise _translate(nv, exc, "NVML", "initialising NVML") from exc
        try:
            return self._gpus_sync(nv)
        except BaseException:
            with contextlib.suppress(*_nvml_errors(nv)):
                nv.nvmlShutdown()
            raise

    def _gpus_sync(self, nv: ModuleType) -> tuple[_Gpu, ...]:
        where, action = "NVML", "counting GPUs"
        try:
            count = int(nv.nvmlDeviceGetCount())
            indices = tuple(range(count)) if self._indices is None else self._indices
            missing = [i for i in indices if i >= count]
            if missing:
                raise ControlError(f"NVML: no GPU {', '.join(map(str, missing))}: this node has {count} "
                                   f"(indices 0..{count - 1})")
            if not indices:
                raise ControlError("NVML: this node has no NVIDIA GPU")
            gpus = []
            for i in indices:
                where, action = f"GPU {i}", "opening the GPU"
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                name = str(nv.nvmlDeviceGetName(handle))
                where, action = f"GPU {i} ({name})", "reading the power-limit range"
                lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                gpus.append(_Gpu(i, name, handle, int(lo), int(hi)))
            return tuple(gpus)
        except _nvml_errors(nv) as exc:
            raise _translate(nv, exc, where, action) from exc

    def _require_open(self) -> ModuleType:
        if self._nv is None:
            raise RuntimeError("NVML backend is not open")
        return self._nv

    async def apply(self, caps_w: Sequence[float]) -> tuple[float, ...]:
        """Set each GPU's limit to its cap (rounded down to mW, clamped to the range); return the enforced limits."""
        nv = self._require_open()
        targets_mw, _ = caps_to_mw(caps_w, [g.min_mw for g in self._gpus], [g.max_mw for g in self._gpus])
        async with self._lock:
            enforced_mw = await asyncio.to_thread(self._apply_sync, nv, targets_mw)
        return tuple(mw_to_w(mw) for mw in enforced_mw)

    def _apply_sync(self, nv: ModuleType, targets_mw: list[int]) -> list[int]:
        enforced: list[int] = []
        failures: list[PowerplaneError] = []
        # One GPU failing does not stop the others from getting their caps; report all after.
        for gpu, target in zip(self._gpus, targets_mw, strict=True):
            action = "reading the power limit"
            try:
                # The management limit is the one we set; the enforced limit can sit lower
                # when another limiter (e.g. an out-of-band cap) is tighter, and setting
                # again would not change it. A set costs milliseconds, a get microseconds.
                if int(nv.nvmlDeviceGetPowerManagementLimit(gpu.handle)) != target:
                    action = f"setting the power limit to {mw_to_w(target):g} W"
                    nv.nvmlDeviceSetPowerManagementLimit(gpu.handle, target)
                action = "reading the enforced power limit"
                enforced.append(int(nv.nvmlDeviceGetEnforcedPowerLimit(gpu.handle)))
            except _nvml_errors(nv) as exc:
                failures.append(_translate(nv, exc, gpu.label, action))
                failures[-1].__cause__ = exc
        if failures:
            if len(failures) == 1:
                raise failures[0]
            raise ControlError("; ".join(str(f) for f in failures)) from failures[0]
        return enforced

    async def read(self) -> GpuReading:
        """Enforced limits and measured power now (``None`` where the board does not report it)."""
        nv = self._require_open()
        async with self._lock:
            return await asyncio.to_thread(self._read_sync, nv)

    def _read_sync(self, nv: ModuleType) -> GpuReading:
        enforced = tuple(self._get_w(nv, g, nv.nvmlDeviceGetEnforcedPowerLimit, "reading the enforced limit")
                         for g in self._gpus)
        power = tuple(self._get_w(nv, g, nv.nvmlDeviceGetPowerUsage, "reading power usage") for g in self._gpus)
        return GpuReading(enforced_w=enforced, power_w=power)

    @staticmethod
    def _get_w(nv: ModuleType, gpu: _Gpu, fn: Callable[[Any], int], action: str) -> float | None:
        try:
            return mw_to_w(int(fn(gpu.handle)))
        except nv.NVMLError_NotSupported:
            return None  # the board does not report it: exactly what GpuReading's None means
        except _nvml_errors(nv) as exc:
            raise _translate(nv, exc, gpu.label, action) from exc

    async def close(self) -> None:
        """Shut NVML down; the limits stay as set. Closing twice is harmless."""
        async with self._lock:
            nv, self._nv, self._gpus = self._nv, None, ()
            if nv is None:
                return
            try:
                await asyncio.to_thread(nv.nvmlShutdown)
            except _nvml_errors(nv) as exc:
                raise _translate(nv, exc, "NVML", "shutting NVML down") from exc


# ---- probe ---------------------------------------------------------------------------------
def probe(gpu_indices: Sequence[int] | None = None) -> str:
    """What NVML sees on this node (driver, GPUs, limit ranges), or why it sees nothing."""
    try:
        nv = _import_pynvml()
    except ControlError as exc:
        return str(exc)
    try:
        nv.nvmlInit()
    except _nvml_errors(nv) as exc:
        return str(_translate(nv, exc, "NVML", "initialising NVML"))
    try:
        return _probe_sync(nv, gpu_indices)
    finally:
        with contextlib.suppress(*_nvml_errors(nv)):
            nv.nvmlShutdown()


def _probe_sync(nv: ModuleType, gpu_indices: Sequence[int] | None) -> str:
    def attempt(action: str, fn: Callable[..., Any], *args: Any) -> Any:
        # A probe reports every failure in its text and carries on to the next item.
        try:
            return fn(*args)
        except _nvml_errors(nv) as exc:
            return _Failed(f"unknown ({_why(nv, exc, action)})")

    driver = attempt("reading the driver version", nv.nvmlSystemGetDriverVersion)
    count = attempt("counting GPUs", nv.nvmlDeviceGetCount)
    if isinstance(count, _Failed):
        return f"NVML driver {driver}: GPU count {count}"
    lines = [f"NVML driver {driver}: {count} GPU(s)"]
    for i in range(count) if gpu_indices is None else gpu_indices:
        where = f"GPU {i}"
        if not 0 <= i < count:
            lines.append(f"  {where}: not present")
            continue
        handle = attempt("opening the GPU", nv.nvmlDeviceGetHandleByIndex, i)
        if isinstance(handle, _Failed):
            lines.append(f"  {where}: {handle}")
            continue
        name = attempt("reading the name", nv.nvmlDeviceGetName, handle)
        rng = attempt("reading the power-limit range", nv.nvmlDeviceGetPowerManagementLimitConstraints, handle)
        enf = attempt("reading the enforced limit", nv.nvmlDeviceGetEnforcedPowerLimit, handle)
        pwr = attempt("reading power usage", nv.nvmlDeviceGetPowerUsage, handle)
        rng_s = rng if isinstance(rng, _Failed) else f"{mw_to_w(rng[0]):g}..{mw_to_w(rng[1]):g} W"
        enf_s = enf if isinstance(enf, _Failed) else f"{mw_to_w(enf):g} W"
        pwr_s = pwr if isinstance(pwr, _Failed) else f"{mw_to_w(pwr):.1f} W"
        lines.append(f"  {where}: {name}, limit range {rng_s}, enforced {enf_s}, drawing {pwr_s}")
    return "\n".join(lines)


class _Failed(str):
    """A probe item NVML would not give, as its explanation."""

    __slots__ = ()
