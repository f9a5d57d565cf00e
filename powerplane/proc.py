"""Child processes that do not outlive their parent.

A demo or a test run that is killed (a CI timeout, SIGKILL) cannot stop what it started; the
brokers, etcd and the plane's processes would then run on as orphans, holding ports and CPU.
``dies_with_parent`` prefixes a command with util-linux ``setpriv --pdeathsig TERM``, which
sets the kernel's parent-death signal and then execs the command (same PID, so signals and
``wait`` work as before). Where there is no ``setpriv`` (not Linux), the command is unchanged.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Sequence


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv") if sys.platform.startswith("linux") else None


def dies_with_parent(cmd: Sequence[str]) -> list[str]:
    """``cmd``, to be terminated (SIGTERM) when the process that starts it dies."""
    exe = _setpriv()
    return [exe, "--pdeathsig", "TERM", "--", *cmd] if exe else list(cmd)
