"""The Slurm spool and its document: read incrementally, hostlists expanded (python-hostlist), every
bad entry a counted refusal; the jobs endpoint takes the same documents from the real prolog (curl)
with a bearer token."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from controllers.jobs.http import JobsEndpoint, load_token
from controllers.jobs.slurm import MAX_DOC_BYTES, SpoolReader, decode, expand_nodes
from controllers.jobs.table import End, Refused, Start
from models.errors import ConfigError
from tests.conftest import ROOT
from tests.controllers.hooks.test_slurm_scripts import fake_scontrol

TOKEN = b"0123456789abcdef0123456789abcdef"


def doc(job: str, nodes: str = "r06-node-[072-075]", **kw: object) -> bytes:
    return json.dumps({"v": 2, "event": "start", "job": job, "nodes": nodes, **kw}).encode()


def test_hostlists_expand_with_python_hostlist() -> None:
    assert expand_nodes("r06-node-[072-074],r07-node-001") == ["r06-node-072", "r06-node-073", "r06-node-074",
                                                              "r07-node-001"]
    for bad in ("r06-node-[072-", "n[0-9999999]"):
        with pytest.raises(ValueError):
            expand_nodes(bad)


def test_documents_decode_or_are_refused() -> None:
    u = decode(doc("42", partition="gpu", qos="high", priority=3, checkpointable=False, ts=10))
    assert isinstance(u, Start) and u.facts.nodes[0] == "r06-node-072" and u.facts.priority == 3
    assert u.facts.checkpointable is False and u.facts.ts_ns == 10 * 10**9
    v1 = decode(b'{"v":1,"event":"start","job":"7","nodes":"n1","partition":"gpu","priority":1,"user":"a","ts":1}')
    assert isinstance(v1, Start)
    assert decode(b'{"v":2,"event":"end","job":"42"}') == End("slurm", "42")
    for bad in (b"{", b"[]", doc("../x"), doc("1", nodes=""), doc("1", nodes="n[1-"), b'{"v":3,"event":"start"}',
                b'{"v":2,"event":"stop","job":"1"}', b" " * (MAX_DOC_BYTES + 1)):
        r = decode(bad)
        assert isinstance(r, Refused) and r.reason == "malformed", bad[:40]


def test_the_spool_is_read_incrementally(tmp_path: Path) -> None:
    spool = tmp_path / "jobs"
    spool.mkdir()
    reader = SpoolReader(spool)
    (spool / "1.json").write_bytes(doc("1"))
    (spool / ".1.json.123").write_bytes(b"half a")  # the prolog's temp file
    (spool / "2.json").write_bytes(doc("3"))  # file name and job differ
    first = reader.scan()
    assert [type(u).__name__ for u in first] == ["Start", "Refused"]
    assert reader.scan() == []  # nothing changed: nothing read
    (spool / "1.json").write_bytes(doc("1", nodes="r06-node-[072-079]"))  # rewritten: read again
    again = reader.scan()
    assert len(again) == 1 and isinstance(again[0], Start) and len(again[0].facts.nodes) == 8
    (spool / "1.json").unlink()
    (spool / "2.json").unlink()
    assert reader.scan() == [End("slurm", "1")]  # a refused file's removal is no end
    missing = SpoolReader(tmp_path / "nope")
    assert missing.scan() == [] and missing.errors == 1


def test_the_token_file_must_be_private_and_long(tmp_path: Path) -> None:
    p = tmp_path / "token"
    p.write_bytes(TOKEN + b"\n")
    p.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_token(p)
    p.chmod(0o600)
    assert load_token(p) == TOKEN
    p.write_bytes(b"short")
    with pytest.raises(ConfigError, match="16"):
        load_token(p)


def post(url: str, body: bytes, token: bytes | None) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token.decode()}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_endpoint_takes_documents_with_the_token_only(tmp_path: Path) -> None:
    ep = JobsEndpoint("127.0.0.1", 0, TOKEN).start()
    try:
        assert post(ep.url, doc("11"), TOKEN) == 202
        assert post(ep.url, doc("12"), b"wrong-token-0123456789") == 401
        assert post(ep.url, doc("13"), None) == 401
        assert post(ep.url, b"{not json", TOKEN) == 400
        assert post(ep.url, b"x" * (MAX_DOC_BYTES + 1), TOKEN) == 413
        assert post(ep.server.url + "/v1/other", doc("14"), TOKEN) == 404
        got = ep.drain()
        assert [type(u).__name__ for u in got] == ["Start", "Refused"]
        assert ep.refused["unauthorized"] == 2 and ep.accepted == 1
    finally:
        ep.stop()


def test_the_real_prolog_and_epilog_post_to_the_endpoint(tmp_path: Path) -> None:
    """deploy/slurm/*.sh with $POWERPLANE_JOBS_URL: curl sends the token from stdin, never argv."""
    token_file = tmp_path / "token"
    token_file.write_bytes(TOKEN)
    token_file.chmod(0o600)
    ep = JobsEndpoint("127.0.0.1", 0, load_token(token_file)).start()
    bin_dir = fake_scontrol(tmp_path / "bin")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "POWERPLANE_SPOOL": str(tmp_path / "spool"),
           "POWERPLANE_JOBS_URL": ep.url, "POWERPLANE_JOBS_TOKEN_FILE": str(token_file), "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "r06-node-[100-103]", "SLURM_JOB_PARTITION": "gpu"}
    try:
        for script in ("prolog.sh", "epilog.sh"):
            r = subprocess.run(["/bin/sh", str(ROOT / "deploy" / "slurm" / script)], env=env, capture_output=True,
                               text=True, timeout=30, check=False)
            assert r.returncode == 0 and r.stderr == "", r.stderr
        got = ep.drain()
        assert len(got) == 2 and isinstance(got[0], Start) and got[1] == End("slurm", "77")
        assert got[0].facts.qos == "high" and len(got[0].facts.nodes) == 4
        r = subprocess.run(["/bin/sh", str(ROOT / "deploy" / "slurm" / "prolog.sh")], capture_output=True, text=True,
                           env={**env, "POWERPLANE_JOBS_TOKEN_FILE": "/nonexistent"}, timeout=30, check=False)
        assert r.returncode == 0 and "POST to" in r.stderr and ep.refused["unauthorized"] == 1
    finally:
        ep.stop()
