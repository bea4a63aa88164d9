"""`revoc status` (issue 10, point 3): heartbeats, latest CRL per scope, presign backlog and
quarantine, as tables and as JSON, from a state made by the real presigner and publisher."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from revoc.quarantine import quarantine_row
from revoc.workers import Heartbeat
from tests.audit_fixtures import State, make_state, run_cli, serial_bytes


@pytest.fixture
async def state(clean_db: asyncpg.Pool, tmp_path: Path, database_url: str) -> State:
    state = await make_state(clean_db, tmp_path, database_url)
    # Whatever the presigner left queued, the backlog below is exactly one change an hour old.
    await state.execute("DELETE FROM ocsp_pending")
    await state.revoke(5)
    await state.execute("UPDATE ocsp_pending SET changed_at = now() - interval '1 hour'")
    await state.execute("DELETE FROM workers")  # only the heartbeats written here
    publisher = Heartbeat("publish", host="crl-1", pid=111)
    await publisher.beat(state.pool, ok=True)
    silent = Heartbeat("presign", host="ocsp-1", pid=222)
    await silent.beat(state.pool, error="OSError: connection refused")
    await state.execute("UPDATE workers SET beat_at = now() - interval '10 minutes',"
                        " last_error_at = now() - interval '10 minutes' WHERE pid = 222")
    stopped = Heartbeat("presign", host="ocsp-2", pid=333)
    await stopped.beat(state.pool, ok=True)
    await stopped.stopped(state.pool)
    await quarantine_row(state.pool, "publish", state.issuer_id, "aud", serial_bytes(6), 9,
                         "ValueError: bad date")
    return state


async def test_json(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_cli(capsys, "status", "--json", "--database-url", state.dsn)
    assert code == 0, err
    status = json.loads(out)
    workers = {(w["kind"], w["host"], w["pid"]): w for w in status["workers"]}
    assert set(workers) == {("publish", "crl-1", 111), ("presign", "ocsp-1", 222),
                            ("presign", "ocsp-2", 333)}
    assert workers["publish", "crl-1", 111]["state"] == "alive"
    assert workers["publish", "crl-1", 111]["beat_age"] < 60
    assert workers["publish", "crl-1", 111]["last_error"] is None
    silent = workers["presign", "ocsp-1", 222]
    assert silent["state"] == "silent" and 590 < silent["beat_age"] < 700
    assert silent["last_ok"] is None and silent["ok_age"] is None
    assert silent["last_error"] == "OSError: connection refused"
    assert silent["last_error_at"].endswith("Z")
    assert workers["presign", "ocsp-2", 333]["state"] == "stopped"
    assert workers["presign", "ocsp-2", 333]["stopped_at"] is not None
    crls = {c["name"]: c for c in status["crls"]}
    assert set(crls) == {"aud.crl", "aud-delta.crl"}
    full = crls["aud.crl"]
    assert full["issuer"] == "aud" and full["shard"] is None and full["kind"] == "full"
    assert full["entries"] == 3 and not full["expired"]
    stored = await state.pool.fetchrow("SELECT number, this_update FROM crls WHERE kind = 'full'")
    assert full["number"] == str(int(stored["number"]))  # a string: above 2^53
    assert full["this_update"] == stored["this_update"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert crls["aud-delta.crl"]["base_number"] == full["number"]
    backlog = status["presign_backlog"]
    assert backlog["changes"] == 1 and 3590 < backlog["age_seconds"] < 3700
    assert status["quarantine"] == {"presign": 0, "publish": 1}
    # A longer threshold: the silent presigner counts as alive.
    code, out, _ = await run_cli(capsys, "status", "--json", "--worker-threshold", "1h",
                                 "--database-url", state.dsn)
    assert {w["pid"]: w["state"] for w in json.loads(out)["workers"]}[222] == "alive"


async def test_tables(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    await state.execute("UPDATE crls SET next_update = now() - interval '1 minute'"
                        " WHERE kind = 'delta'")
    code, out, err = await run_cli(capsys, "status", "--database-url", state.dsn)
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("KIND"))
    assert lines[header - 1] == "workers"
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [row[:3] for row in rows] == [["presign", "ocsp-1", "222"], ["presign", "ocsp-2", "333"],
                                         ["publish", "crl-1", "111"]]
    assert "silent" in rows[0] and "OSError:" in rows[0]
    assert rows[0][4:6] == ["10m", "ago"]  # last heartbeat
    assert "stopped" in rows[1] and "alive" in rows[2]
    crl_header = next(i for i, line in enumerate(lines) if line.strip().startswith("ISSUER"))
    assert lines[crl_header - 1] == "latest CRLs"
    crl_rows = [line.split() for line in lines[crl_header + 1:crl_header + 3]]
    assert [row[:3] for row in crl_rows] == [["aud", "-", "delta"], ["aud", "-", "full"]]
    assert crl_rows[0][-2:] == ["EXPIRED", "0"] and crl_rows[1][-1] == "3"
    assert "presign backlog: 1 change(s) not yet in OCSP, oldest from" in out
    assert "(60m ago)" in out
    assert lines[-1] == "quarantine: presign 0 row(s), publish 1 row(s)"


async def test_empty_database(clean_db: asyncpg.Pool, database_url: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await run_cli(capsys, "status", "--database-url", database_url)
    assert code == 0
    assert "no worker has written a heartbeat" in out and "no CRL published" in out
    assert "presign backlog: none" in out


async def test_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    for command in (["status"], ["status", "--json"], ["audit"]):
        code, out, err = await run_cli(capsys, *command, "--database-url",
                                       "postgresql://nobody@127.0.0.1:1/revoc")
        assert code == 1 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("revoc: error: ")


async def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["audit", "--grace", "soon"], ["audit", "--grace", "-5"],
                    ["status", "--worker-threshold", "x"], ["status", "--yaml"]):
        code, out, err = await run_cli(capsys, *command)
        assert code == 2, command
        assert out == "" and len(err.splitlines()) == 1
