"""deploy/slurm prolog/epilog: run with /bin/sh as slurmctld would (a fake ``scontrol`` on PATH), and
shellcheck them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SLURM = ROOT / "deploy" / "slurm"


def fake_scontrol(bin_dir: Path, qos: str = "high", account: str = "llm") -> Path:
    """A ``scontrol`` that answers ``scontrol show job -o ID`` as Slurm 23+ does (one line)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "scontrol"
    exe.write_text("#!/bin/sh\n"
                   'if [ "$1 $2 $3" = "show job -o" ]; then\n'
                   f'  echo "JobId=$4 JobName=train UserId=alice(1000) Priority=4294901 Account={account} '
                   f'QOS={qos} JobState=RUNNING Partition=gpu Requeue=1 Comment=x"\n'
                   "  exit 0\nfi\nexit 1\n")
    exe.chmod(0o755)
    return bin_dir


def run(script: str, spool: Path, bin_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.environ["PATH"] if bin_dir is None else f"{bin_dir}:{os.environ['PATH']}"
    full = {"PATH": path, "POWERPLANE_SPOOL": str(spool), **env}
    return subprocess.run(["/bin/sh", str(SLURM / script)], env=full, capture_output=True, text=True, timeout=30,
                          check=False)


def test_prolog_registers_and_epilog_unregisters(tmp_path: Path) -> None:
    spool = tmp_path / "jobs"
    bin_dir = fake_scontrol(tmp_path / "bin")
    r = run("prolog.sh", spool, bin_dir, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[000-003]",
            SLURM_JOB_PARTITION="gpu", SLURM_JOB_USER='al"ice', SLURM_JOB_COMMENT="ckpt powerplane:priority=3")
    assert r.returncode == 0 and r.stderr == ""
    doc = json.loads((spool / "4242.json").read_text())
    assert {k: v for k, v in doc.items() if k != "ts"} == {
        "v": 2, "event": "start", "job": "4242", "nodes": "node-[000-003]", "partition": "gpu", "qos": "high",
        "account": "llm", "priority": 3, "user": 'al"ice'}
    assert run("epilog.sh", spool, bin_dir, SLURM_JOB_ID="4242").returncode == 0
    assert list(spool.iterdir()) == []


def test_what_a_job_asks_for(tmp_path: Path) -> None:
    """A priority from the comment or a feature, checkpointability from the comment; nothing otherwise
    (the site's [scheduler] rules decide)."""
    bin_dir = fake_scontrol(tmp_path / "bin")
    cases = [({"SLURM_JOB_CONSTRAINTS": "a100&powerplane-priority-5"}, {"priority": 5}),
             ({"SLURM_JOB_COMMENT": "powerplane:checkpointable=no"}, {"checkpointable": False}),
             ({"SLURM_JOB_COMMENT": "powerplane:priority=x powerplane:checkpointable=yes"}, {"checkpointable": True}),
             ({"SLURM_JOB_PARTITION": "gpu"}, {})]
    for i, (env, want) in enumerate(cases):
        assert run("prolog.sh", tmp_path, bin_dir, SLURM_JOB_ID=str(i), **env).returncode == 0
        doc = json.loads((tmp_path / f"{i}.json").read_text())
        assert {k: doc[k] for k in ("priority", "checkpointable") if k in doc} == want


def test_without_scontrol_the_job_registers_without_qos(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    r = subprocess.run(["/bin/sh", str(SLURM / "prolog.sh")], capture_output=True, text=True, timeout=30,
                       env={"PATH": f"{empty}:/usr/bin:/bin", "POWERPLANE_SPOOL": str(tmp_path), "SLURM_JOB_ID": "9",
                            "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ACCOUNT": "acct"}, check=False)
    assert r.returncode == 0 and "scontrol show job failed" in r.stderr
    doc = json.loads((tmp_path / "9.json").read_text())
    assert doc["qos"] == "" and doc["account"] == "acct"


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
