"""``powerplane hooks receive|test|replay`` through a parser built from ``register``."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest
from rich.console import Console

from controllers.hooks.payloads import build_payload
from controllers.hooks.webhook import DeadLetter, dead_letter_record, read_dead_letter
from models.events import EVENT_KINDS
from powerplane.commands.hooks import register, sample_event
from testbed.realservers import free_port
from tests.controllers.hooks.conftest import SECRET, SigServer


def run(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="powerplane")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    console = Console(record=True, width=200, force_terminal=False)
    with console.capture() as cap:
        rc = int(args.handler(args, console))
    return rc, cap.get()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    f = tmp_path / "secret"
    f.write_text(SECRET.decode() + "\n")
    return f


def test_receive_prints_what_test_sends(secret_file: Path) -> None:
    port = free_port()
    result: dict[str, tuple[int, str]] = {}
    t = threading.Thread(target=lambda: result.setdefault("rx", run(
        ["hooks", "receive", "--port", str(port), "--secret-file", str(secret_file), "--count", "1",
         "--timeout", "60"])))
    t.start()
    try:
        # the receiver may not be listening yet: hooks test retries a refused connection
        rc, out = run(["hooks", "test", "--url", f"http://127.0.0.1:{port}/hooks", "--secret-file",
                       str(secret_file), "--tries", "20", "--kind", "move_recommendation"])
    finally:
        t.join()
    assert rc == 0 and "delivered move_recommendation" in out
    rx_rc, rx_out = result["rx"]
    assert rx_rc == 0 and "move_recommendation job-7 value=12500: [test] move job-7 from r01 to r03" in rx_out
    assert "1 events accepted, 0 duplicates, rejected: none" in rx_out


def test_test_reports_a_refusing_endpoint(secret_file: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("a-different-secret-entirely")
    srv = SigServer()
    try:
        rc, out = run(["hooks", "test", "--url", srv.url, "--secret-file", str(wrong), "--kind", "dr_end"])
    finally:
        srv.stop()
    assert rc == 1 and "not delivered" in out and "HTTP 401" in out and "permanent" in out


def test_replay_delivers_and_keeps_what_fails(secret_file: Path, tmp_path: Path) -> None:
    srv = SigServer(statuses=[200, 500, 500])
    dl = tmp_path / "dl.jsonl"
    payloads = [build_payload("demo", sample_event(k, 1_000 + i)) for i, k in enumerate(EVENT_KINDS[:2])]
    DeadLetter(dl).write([dead_letter_record(p, srv.url, "max_tries", "HTTP 500", 6) for p in payloads]
                         + [dead_letter_record(payloads[0], "http://elsewhere/x", "max_tries", "x", 6)])
    try:
        rc, out = run(["hooks", "replay", "--dead-letter", str(dl), "--url", srv.url, "--secret-file",
                       str(secret_file), "--tries", "2", "--timeout", "5"])
    finally:
        srv.stop()
    assert rc == 1 and "1 delivered, 1 failed, 1 for other URLs skipped" in out
    assert srv.accepted() == payloads[:1]
    (failed,) = read_dead_letter(f"{dl}.failed")
    assert failed["payload"] == payloads[1] and failed["tries"] == 8


def test_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    from models.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read the webhook secret"):
        run(["hooks", "test", "--url", "http://127.0.0.1:1/", "--secret-file", str(tmp_path / "none")])


def test_sample_events_cover_every_kind() -> None:
    assert {sample_event(k, 0).kind for k in EVENT_KINDS} == set(EVENT_KINDS)
