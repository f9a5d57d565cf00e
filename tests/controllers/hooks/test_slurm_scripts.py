"""deploy/slurm prolog/epilog: run with /bin/sh as slurmctld would, and shellcheck them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SLURM = ROOT / "deploy" / "slurm"


def run(script: str, spool: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "POWERPLANE_SPOOL": str(spool), **env}
    return subprocess.run(["/bin/sh", str(SLURM / script)], env=full, capture_output=True, text=True, timeout=30,
                          check=False)


def test_prolog_registers_and_epilog_unregisters(tmp_path: Path) -> None:
    spool = tmp_path / "jobs"
    r = run("prolog.sh", spool, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[000-003]",
            SLURM_JOB_PARTITION="gpu", SLURM_JOB_USER='al"ice', SLURM_JOB_COMMENT="ckpt powerplane:priority=3")
    assert r.returncode == 0 and r.stderr == ""
    doc = json.loads((spool / "4242.json").read_text())
    assert {k: v for k, v in doc.items() if k != "ts"} == {
        "v": 1, "event": "start", "job": "4242", "nodes": "node-[000-003]", "partition": "gpu", "priority": 3,
        "user": 'al"ice'}
    assert run("epilog.sh", spool, SLURM_JOB_ID="4242").returncode == 0
    assert list(spool.iterdir()) == []


def test_priority_from_feature_partition_or_default(tmp_path: Path) -> None:
    cases = [({"SLURM_JOB_CONSTRAINTS": "a100&powerplane-priority-5"}, 5),
             ({"SLURM_JOB_PARTITION": "gpu", "POWERPLANE_PARTITION_PRIORITY": "gpu-high=3 gpu=2"}, 2),
             ({"SLURM_JOB_PARTITION": "other", "POWERPLANE_DEFAULT_PRIORITY": "4"}, 4),
             ({"SLURM_JOB_COMMENT": "powerplane:priority=x"}, 1)]
    for i, (env, prio) in enumerate(cases):
        assert run("prolog.sh", tmp_path, SLURM_JOB_ID=str(i), **env).returncode == 0
        assert json.loads((tmp_path / f"{i}.json").read_text())["priority"] == prio


def test_never_fails_the_job(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    r = run("prolog.sh", blocked / "jobs", SLURM_JOB_ID="1")
    assert r.returncode == 0 and "cannot create spool" in r.stderr
    r = run("prolog.sh", tmp_path, SLURM_JOB_ID="../etc/x")
    assert r.returncode == 0 and "refusing" in r.stderr and not (tmp_path.parent / "etc").exists()
    assert run("epilog.sh", tmp_path).returncode == 0


def test_shellcheck_clean() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run([exe, "-s", "sh", str(SLURM / "prolog.sh"), str(SLURM / "epilog.sh")], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout
