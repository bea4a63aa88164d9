"""Issue 10 at the admin edges: validated input, exit statuses, one registration per CA, the CRL
scope a certificate names, and status changes that reach the presigner's queue.

Every refusal is checked three ways: the exit status (2 malformed value, 1 refused; INTERFACE.md),
exactly one line on stderr saying what is wrong, and nothing written (the issuer's rows, its
ocsp_pending rows and the issuers table are as before).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from revoc import admin
from revoc.der.asn1 import integer_content
from revoc.notify import decode_serial_change
from tests.cli_session import fetch, run
from tests.pki import Party, make_ca, make_leaf

_names = itertools.count(1)


@pytest.fixture()
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REVOC_DATABASE_URL", database_url)
    return database_url


@pytest.fixture()
def name() -> str:
    return f"edge{os.getpid()}-{next(_names)}"


@pytest.fixture()
def ca() -> Party:
    return make_ca("Edge CA")


def snapshot(dsn: str, issuer: str) -> tuple[object, ...]:
    """Everything a refused command must leave as it was."""
    certificates = fetch(
        dsn,
        "SELECT row_to_json(c)::text FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
        "WHERE i.name = $1 ORDER BY c.serial",
        issuer,
    )
    pending = fetch(
        dsn,
        "SELECT row_to_json(p)::text FROM ocsp_pending p JOIN issuers i ON i.id = p.issuer_id "
        "WHERE i.name = $1 ORDER BY p.serial",
        issuer,
    )
    issuers = fetch(dsn, "SELECT row_to_json(i)::text FROM issuers i ORDER BY id")
    return tuple(r[0] for r in certificates), tuple(r[0] for r in pending), tuple(
        r[0] for r in issuers
    )


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def add_issuer(name: str, ca: Party, directory: Path, *extra: str) -> None:
    cert, key = ca.write(directory / name)
    assert run("issuer", "add", "--name", name, "--cert", str(cert), "--key", str(key), *extra) == 0


def add_leaf(name: str, ca: Party, serial: int, directory: Path, **kw: str) -> Path:
    path = directory / f"leaf-{serial:x}.pem"
    path.write_bytes(make_leaf(ca, serial, **kw).cert_pem)  # type: ignore[arg-type]
    assert run("cert", "add", "--issuer", name, str(path)) == 0
    return path


def row(dsn: str, issuer: str, serial: int) -> asyncpg.Record:
    rows = fetch(
        dsn,
        "SELECT c.* FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
        "WHERE i.name = $1 AND c.serial = $2",
        issuer,
        integer_content(serial),
    )
    assert len(rows) == 1
    return rows[0]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ revoke: dates and serials


def test_revoked_at_year_one_is_refused_by_the_console_script(
    env: str, name: str, ca: Party, tmp_path: Path
) -> None:
    """What was seen: `--revoked-at 0001-01-01T00:00:00Z` was accepted and PostgreSQL stored
    -infinity, which the DER encoder could not write. Now: exit 2, one line, nothing written."""
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x5E, tmp_path)
    before = snapshot(env, name)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "revoc"), "cert", "revoke", "--issuer", name,
         "--serial", "5E", "--reason", "superseded", "--revoked-at", "0001-01-01T00:00:00Z"],
        capture_output=True, text=True, timeout=60, env=os.environ | {"REVOC_DATABASE_URL": env},
    )
    assert result.returncode == 2
    assert result.stderr == (
        "revoc: error: --revoked-at 0001-01-01T00:00:00Z is before 1950-01-01 "
        "(RFC 5280 dates start at 1950)\n"
    )
    assert snapshot(env, name) == before
    assert row(env, name, 0x5E)["status"] == "good"


def _future(minutes: int) -> str:
    return iso(datetime.now(UTC) + timedelta(minutes=minutes))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--revoked-at", "0001-01-01T00:00:00Z"], "--revoked-at 0001-01-01T00:00:00Z is before "
         "1950-01-01 (RFC 5280 dates start at 1950)"),
        (["--revoked-at", "1949-12-31T23:59:59Z"], "--revoked-at 1949-12-31T23:59:59Z is before "
         "1950-01-01"),
        (["--revoked-at", "1950-01-01T00:30:00+01:00"], "--revoked-at 1949-12-31T23:30:00Z is "
         "before 1950-01-01"),
        # Before year 1 once converted to UTC: Python cannot even hold it.
        (["--revoked-at", "0001-01-01T00:00:00+01:00"], "--revoked-at 0001-01-01T00:00:00+01:00 "
         "is outside the years 1950-9999"),
        (["--revoked-at", "9999-12-31T23:59:59-01:00"], "is outside the years 1950-9999"),
        (["--revoked-at", "2999-01-01T00:00:00Z"], "--revoked-at 2999-01-01T00:00:00Z lies in "
         "the future (after now plus 5 minutes, "),
        (["--revoked-at", "now+10min"], "is not an ISO 8601 time"),
        (["--invalidity-date", "0001-01-01T00:00:00Z"], "--invalidity-date "
         "0001-01-01T00:00:00Z is before 1950-01-01 (RFC 5280 dates start at 1950)"),
        (["--invalidity-date", "2999-01-01T00:00:00Z"], "--invalidity-date "
         "2999-01-01T00:00:00Z lies in the future"),
        (["--revoked-at", "2025-06-02T00:00:00Z", "--invalidity-date", "2025-06-03T00:00:00Z"],
         "--invalidity-date 2025-06-03T00:00:00Z is after the revocation time "
         "2025-06-02T00:00:00Z (RFC 5280 5.3.2"),
    ],
)
def test_revoke_refuses_implausible_dates(
    env: str, name: str, ca: Party, tmp_path: Path, extra: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 10 point 2: dates DER can carry and that are plausible, [1950, now + 5 min]."""
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x77, tmp_path)
    before = snapshot(env, name)
    capsys.readouterr()
    assert run("cert", "revoke", "--issuer", name, "--serial", "77", "--reason",
               "keyCompromise", *extra) == 2
    assert message in one_line(capsys)
    assert snapshot(env, name) == before


def test_invalidity_date_after_an_earlier_revocation_is_refused(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Raising a revocation to keyCompromise keeps its date, so the compromise time given then
    must not be after that date either."""
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x78, tmp_path)
    assert run("cert", "revoke", "--issuer", name, "--serial", "78", "--reason", "superseded",
               "--revoked-at", "2025-06-02T00:00:00Z") == 0
    before = snapshot(env, name)
    capsys.readouterr()
    assert run("cert", "revoke", "--issuer", name, "--serial", "78", "--reason",
               "keyCompromise", "--invalidity-date", "2025-06-05T00:00:00Z") == 2
    assert "is after the revocation time 2025-06-02T00:00:00Z" in one_line(capsys)
    assert snapshot(env, name) == before


def test_revoke_accepts_the_edges_of_the_plausible_range(
    env: str, name: str, ca: Party, tmp_path: Path
) -> None:
    """1950-01-01 itself, and a few minutes ahead (clock skew between CA and service)."""
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x79, tmp_path)
    add_leaf(name, ca, 0x7A, tmp_path)
    assert run("cert", "revoke", "--issuer", name, "--serial", "79", "--reason", "superseded",
               "--revoked-at", "1950-01-01T00:00:00Z") == 0
    assert row(env, name, 0x79)["revoked_at"] == datetime(1950, 1, 1, tzinfo=UTC)
    soon = _future(2)
    assert run("cert", "revoke", "--issuer", name, "--serial", "7A", "--reason",
               "keyCompromise", "--revoked-at", soon, "--invalidity-date", soon) == 0
    assert row(env, name, 0x7A)["status"] == "revoked"


@pytest.mark.parametrize(
    ("serial", "message"),
    [
        ("-1F", "serial '-1F' is not hexadecimal"),
        ("1_0", "serial '1_0' is not hexadecimal"),
        ("0", "serial '0' is zero; serials are positive"),
        ("00:00", "serial '00:00' is zero"),
        ("0x", "serial '0x' is not hexadecimal"),
        ("\N{ARABIC-INDIC DIGIT ONE}", "is not hexadecimal"),
        ("01" * 21, "is longer than 20 octets"),
        ("FF" * 20, "is longer than 20 octets"),  # 21 octets with the sign octet
    ],
)
def test_revoke_and_unhold_refuse_malformed_serials(
    env: str, name: str, ca: Party, tmp_path: Path, serial: str, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x10, tmp_path)
    before = snapshot(env, name)
    capsys.readouterr()
    # --serial=VALUE: argparse would take a bare "-1F" for an option.
    assert run("cert", "revoke", "--issuer", name, f"--serial={serial}", "--reason",
               "keyCompromise") == 2
    assert message in one_line(capsys)
    assert run("cert", "unhold", "--issuer", name, f"--serial={serial}") == 2
    assert message in one_line(capsys)
    assert snapshot(env, name) == before


def test_twenty_octet_serial_is_accepted(
    env: str, name: str, ca: Party, tmp_path: Path
) -> None:
    serial = int("7F" + "FF" * 19, 16)
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, serial, tmp_path)
    assert run("cert", "revoke", "--issuer", name, "--serial", f"0x{serial:X}", "--reason",
               "superseded") == 0
    assert row(env, name, serial)["status"] == "revoked"


async def test_revoke_api_refuses_bad_serials_and_year_one(
    env: str, pool: asyncpg.Pool, name: str, ca: Party, tmp_path: Path
) -> None:
    """The same checks hold for callers of revoc.admin that bypass the CLI's parsing."""
    await asyncio.to_thread(add_issuer, name, ca, tmp_path)
    async with pool.acquire() as conn:
        for serial in (0, -0x1F, 1 << 160):
            with pytest.raises(admin.InputError, match="serial"):
                await admin.revoke(conn, admin.RevokeRequest(name, serial, admin.Reason.superseded))
            with pytest.raises(admin.InputError, match="serial"):
                await admin.unhold(conn, name, serial)
        with pytest.raises(admin.InputError, match="before 1950-01-01"):
            await admin.revoke(conn, admin.RevokeRequest(
                name, 5, admin.Reason.superseded, revoked_at=datetime(1, 1, 1, tzinfo=UTC)))


# ------------------------------------------------------------------ exit statuses


def test_refusals_exit_1_and_malformed_values_exit_2(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """INTERFACE.md: 1 when an operation is refused or fails, 2 on bad usage."""
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x20, tmp_path)
    capsys.readouterr()
    refused = [
        (["cert", "revoke", "--issuer", "nope", "--serial", "20", "--reason", "superseded"],
         "no issuer named 'nope'"),
        (["cert", "revoke", "--issuer", name, "--serial", "21", "--reason", "superseded"],
         "not a known certificate"),
        (["cert", "unhold", "--issuer", name, "--serial", "20"], "not on hold"),
        (["cert", "shard", "--issuer", name, "--serial", "20"], "is not sharded"),
        (["cert", "add", "--issuer", name,
          str(make_leaf(make_ca("Stranger"), 0x22).write(tmp_path / "s")[0])],
         "was not issued by"),
    ]
    for argv, message in refused:
        assert run(*argv) == 1, argv
        assert message in one_line(capsys), argv
    assert run("cert", "revoke", "--issuer", name, "--serial", "20", "--reason",
               "superseded") == 0
    capsys.readouterr()
    assert run("cert", "revoke", "--issuer", name, "--serial", "20", "--reason",
               "superseded") == 1
    assert "already revoked" in one_line(capsys)
    malformed = [
        (["cert", "revoke", "--issuer", name, "--serial", "xyz", "--reason", "superseded"],
         "not hexadecimal"),
        (["cert", "revoke", "--issuer", name, "--serial", "20", "--reason", "bogus"],
         "unknown revocation reason"),
        (["cert", "add", "--issuer", name, str(tmp_path / "missing.pem")], "cannot read"),
        (["cert", "import", "--issuer", name, "--openssl-index", str(tmp_path / "none.txt")],
         "cannot read"),
        (["issuer", "add", "--name", "bad name", "--cert", str(tmp_path / "x.pem")],
         "issuer name"),
    ]
    for argv, message in malformed:
        assert run(*argv) == 2, argv
        assert message in one_line(capsys), argv
    # int() would read "1_0" as 10; argparse reports the bad flag and exits 2 itself.
    with pytest.raises(SystemExit) as exit_info:
        run("issuer", "add", "--name", f"{name}-x", "--cert", str(tmp_path / "x.pem"),
            "--crl-shards", "1_0")
    assert exit_info.value.code == 2
    assert "'1_0' is not a decimal number" in one_line(capsys)


# ------------------------------------------------------------------ index.txt import

_GOOD = "V\t300101000000Z\t\t0A\tunknown\t/CN=a\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # What was seen: an index.txt revocation time of year 1 was accepted.
        ("R\t300101000000Z\t00010101000000Z\t0B\tunknown\t/CN=b\n",
         "index.txt:2: revocation time 00010101000000Z is before 1950-01-01 (RFC 5280 dates "
         "start at 1950)"),
        ("R\t300101000000Z\t19491231235959Z\t0B\tunknown\t/CN=b\n",
         "index.txt:2: revocation time 19491231235959Z is before 1950-01-01"),
        ("R\t300101000000Z\t20990101000000Z\t0B\tunknown\t/CN=b\n",
         "index.txt:2: revocation time 20990101000000Z lies in the future (after now plus 5 "
         "minutes"),
        ("R\t300101000000Z\t250601000000Z,keyCompromise,20250602000000Z\t0B\tunknown\t/CN=b\n",
         "index.txt:2: compromise time 20250602000000Z is after the revocation time "
         "2025-06-01T00:00:00Z"),
        ("R\t300101000000Z\t250601000000Z,keyCompromise,00010101000000Z\t0B\tunknown\t/CN=b\n",
         "index.txt:2: compromise time 00010101000000Z is before 1950-01-01"),
        ("R\t300101000000Z\t251301000000Z\t0B\tunknown\t/CN=b\n",
         "index.txt:2: revocation time 251301000000Z is not a valid date"),
        ("R\t300101000000Z\t\uff12\uff16\uff10\uff11\uff10\uff11\uff10\uff10\uff10\uff10\uff10"
         "\uff10Z\t0B\tunknown\t/CN=b\n", "index.txt:2: revocation time"),
        ("V\t00010101000000Z\t\t0B\tunknown\t/CN=b\n",
         "index.txt:2: expiry time 00010101000000Z is before 1950-01-01"),
        ("V\t00000101000000Z\t\t0B\tunknown\t/CN=b\n",
         "index.txt:2: expiry time 00000101000000Z is not a valid date"),
        ("V\t3001010000Z\t\t0B\tunknown\t/CN=b\n", "index.txt:2: expiry time '3001010000Z' is "
         "not a time"),
        ("V\t300101000000Z\t\t-1F\tunknown\t/CN=b\n",
         "index.txt:2: serial '-1F' is not hexadecimal (digits 0-9 and A-F only)"),
        ("V\t300101000000Z\t\t1_0\tunknown\t/CN=b\n", "index.txt:2: serial '1_0' is not "
         "hexadecimal"),
        ("V\t300101000000Z\t\t 0B\tunknown\t/CN=b\n", "index.txt:2: serial ' 0B' is not "
         "hexadecimal"),
        ("V\t300101000000Z\t\t00\tunknown\t/CN=b\n", "index.txt:2: serial '00' is zero"),
        ("V\t300101000000Z\t\t" + "AB" * 21 + "\tunknown\t/CN=b\n",
         "index.txt:2: serial '" + "AB" * 21 + "' is longer than 20 octets"),
        ("V\t300101000000Z\t\t" + "80" + "00" * 19 + "\tunknown\t/CN=b\n",
         "is longer than 20 octets"),
    ],
)
@pytest.mark.parametrize("existing", [False, True], ids=["first-import", "merge"])
def test_import_refuses_bad_lines_and_writes_nothing(
    env: str, name: str, ca: Party, tmp_path: Path, line: str, message: str, existing: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 10 point 2 for the importer: `path:line: reason`, exit 2, no row written, whether
    the issuer had no certificates (COPY path) or some (merge path)."""
    add_issuer(name, ca, tmp_path)
    if existing:
        add_leaf(name, ca, 0x0A, tmp_path)
    before = snapshot(env, name)
    index = tmp_path / "index.txt"
    index.write_text(_GOOD + line, encoding="utf-8")
    capsys.readouterr()
    assert run("cert", "import", "--issuer", name, "--openssl-index", str(index)) == 2
    assert message in one_line(capsys)
    assert snapshot(env, name) == before


@pytest.mark.parametrize("existing", [False, True], ids=["first-import", "merge"])
def test_import_bad_line_after_rows_were_sent_writes_nothing(
    env: str, name: str, ca: Party, tmp_path: Path, existing: bool,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The importer streams the file into COPY a chunk at a time (revoc/importer.py): a bad line
    found after earlier chunks were already sent still fails the whole import, and nothing of it
    is written (the chunk is 2 lines here, the bad line number 8)."""
    from revoc import importer

    monkeypatch.setattr(importer, "CHUNK", 2)
    add_issuer(name, ca, tmp_path)
    if existing:
        add_leaf(name, ca, 0x0A, tmp_path)
    before = snapshot(env, name)
    index = tmp_path / "index.txt"
    lines = [f"V\t300101000000Z\t\t{s:02X}\tunknown\t/CN={s}\n" for s in range(0x40, 0x47)]
    lines[3] = "R\t300101000000Z\t250601000000Z,keyCompromise\t43\tunknown\t/CN=r\n"
    index.write_text("".join(lines) + "V\t300101000000Z\t\tXYZ\tunknown\t/CN=bad\n")
    capsys.readouterr()
    assert run("cert", "import", "--issuer", name, "--openssl-index", str(index)) == 2
    assert "index.txt:8: serial 'XYZ' is not hexadecimal" in one_line(capsys)
    assert snapshot(env, name) == before
    # The same file without the bad line imports every line, in chunks of 2.
    index.write_text("".join(lines))
    assert run("cert", "import", "--issuer", name, "--openssl-index", str(index)) == 0
    rows = fetch(env, "SELECT serial, status FROM certificates c JOIN issuers i ON "
                 "i.id = c.issuer_id WHERE i.name = $1 AND serial >= '\\x40'::bytea", name)
    assert sorted((bytes(r[0]), r[1]) for r in rows) == [
        (bytes([s]), "revoked" if s == 0x43 else "good") for s in range(0x40, 0x47)]


@pytest.mark.parametrize("existing", [False, True], ids=["first-import", "merge"])
def test_import_killed_during_its_copy_writes_nothing(
    env: str, name: str, ca: Party, tmp_path: Path, existing: bool,
) -> None:
    """The one rule for the streamed import: `revoc cert import` killed (SIGKILL) while its COPY
    streams rows, the revocations among them included, leaves nothing behind (no certificate,
    no queued change, no audit row): the open transaction dies with the connection, and the
    command never said they were recorded."""
    add_issuer(name, ca, tmp_path)
    if existing:
        add_leaf(name, ca, 0x0A, tmp_path)
    before = snapshot(env, name)
    audit_before = fetch(env, "SELECT count(*) FROM audit_log")[0][0]
    index = tmp_path / "index.txt"
    with index.open("w") as out:
        for n in range(1, 400_001):
            if n % 10 == 0:
                out.write(f"R\t300101000000Z\t250601000000Z,keyCompromise\t{n + 0x100000:X}"
                          "\tunknown\t/CN=r\n")
            else:
                out.write(f"V\t300101000000Z\t\t{n + 0x100000:X}\tunknown\t/CN=v\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "revoc.cli", "cert", "import", "--issuer", name,
         "--openssl-index", str(index)],
        env={**os.environ, "REVOC_DATABASE_URL": env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        copying = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()" \
                  " AND state = 'active' AND query LIKE 'COPY %'"
        while not (backends := fetch(env, copying)):
            assert process.poll() is None, "the import ended before its COPY was seen"
            assert time.monotonic() < deadline, "the import's COPY never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        pid = backends[0][0]
        while fetch(env, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid):
            assert time.monotonic() < deadline, "the import's backend outlived it"
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert snapshot(env, name) == before
    assert fetch(env, "SELECT count(*) FROM audit_log")[0][0] == audit_before


def test_import_refuses_a_repeated_serial(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_issuer(name, ca, tmp_path)
    index = tmp_path / "index.txt"
    index.write_text(_GOOD + _GOOD.replace("/CN=a", "/CN=again"))
    before = snapshot(env, name)
    capsys.readouterr()
    assert run("cert", "import", "--issuer", name, "--openssl-index", str(index)) == 2
    assert "appears more than once" in one_line(capsys)
    assert snapshot(env, name) == before


def test_import_that_revokes_queues_the_presigner_and_notifies(
    env: str, name: str, ca: Party, tmp_path: Path
) -> None:
    """Point 1's precondition: an import that revokes good rows queues them in ocsp_pending
    (by the 0004 trigger, in the import's transaction) and says so on cert_changed."""
    add_issuer(name, ca, tmp_path)
    index = tmp_path / "index.txt"
    index.write_text("".join(f"V\t300101000000Z\t\t{s:02X}\tunknown\t/CN={s}\n"
                             for s in (0x31, 0x32, 0x33)))
    assert run("cert", "import", "--issuer", name, "--openssl-index", str(index)) == 0
    assert snapshot(env, name)[1] == ()  # good rows are no change for the presigner
    index.write_text(
        "R\t300101000000Z\t250601000000Z,superseded\t31\tunknown\t/CN=1\n"
        "V\t300101000000Z\t\t32\tunknown\t/CN=2\n"
        "R\t300101000000Z\t250602000000Z,keyCompromise,20250531000000Z\t33\tunknown\t/CN=3\n"
        "R\t300101000000Z\t250603000000Z\t34\tunknown\t/CN=4\n"  # new and revoked
    )
    issuer_id = fetch(env, "SELECT id FROM issuers WHERE name = $1", name)[0][0]

    async def import_and_listen() -> list[str]:
        heard: list[str] = []
        listener = await asyncpg.connect(env)
        got = asyncio.Event()

        def on_notify(*args: object) -> None:
            heard.append(str(args[3]))
            got.set()

        await listener.add_listener("cert_changed", on_notify)
        try:
            assert await asyncio.to_thread(
                run, "cert", "import", "--issuer", name, "--openssl-index", str(index)) == 0
            await asyncio.wait_for(got.wait(), timeout=5)
        finally:
            await listener.close()
        return heard

    heard = asyncio.run(import_and_listen())
    assert [decode_serial_change(p) for p in heard] == [
        decode_serial_change(f"{issuer_id}:*")]
    pending = fetch(
        env,
        "SELECT p.serial, p.change_seq, p.changed_at, c.change_seq AS cert_seq, c.changed_at "
        "AS cert_changed FROM ocsp_pending p JOIN certificates c USING (issuer_id, serial) "
        "WHERE p.issuer_id = $1 ORDER BY p.serial",
        issuer_id,
    )
    assert [bytes(r["serial"]) for r in pending] == [b"\x31", b"\x33", b"\x34"]
    for record in pending:
        assert record["changed_at"] is not None
        assert record["changed_at"] == record["cert_changed"]
        assert record["change_seq"] == record["cert_seq"]
    assert row(env, name, 0x33)["invalidity_date"] == datetime(2025, 5, 31, tzinfo=UTC)


def test_revoke_and_unhold_queue_and_notify_through_the_codec(
    env: str, name: str, ca: Party, tmp_path: Path
) -> None:
    add_issuer(name, ca, tmp_path)
    add_leaf(name, ca, 0x8001, tmp_path)  # high bit: stored with a leading 00 octet
    issuer_id = fetch(env, "SELECT id FROM issuers WHERE name = $1", name)[0][0]

    async def scenario() -> list[str]:
        heard: list[str] = []
        both = asyncio.Event()

        def on_notify(*args: object) -> None:
            heard.append(str(args[3]))
            if len(heard) == 2:
                both.set()

        listener = await asyncpg.connect(env)
        await listener.add_listener("cert_changed", on_notify)
        try:
            for argv in (["revoke", "--reason", "certificateHold"], ["unhold"]):
                assert await asyncio.to_thread(
                    run, "cert", argv[0], "--issuer", name, "--serial", "8001", *argv[1:]) == 0
            await asyncio.wait_for(both.wait(), timeout=5)
        finally:
            await listener.close()
        return heard

    heard = asyncio.run(scenario())
    changes = [decode_serial_change(p) for p in heard]
    assert all(c is not None and c.issuer_id == issuer_id and c.serial == b"\x00\x80\x01"
               for c in changes), heard
    pending = fetch(env, "SELECT serial, change_seq FROM ocsp_pending WHERE issuer_id = $1",
                    issuer_id)
    assert [(bytes(r[0]), r[1]) for r in pending] == [
        (b"\x00\x80\x01", row(env, name, 0x8001)["change_seq"])]


# ------------------------------------------------------------------ one registration per CA


def test_second_registration_of_a_ca_is_refused(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What was seen: `issuer add --name other` for a CA registered as another issuer succeeded,
    and every serial of that CA was answered `unauthorized` after the next reload."""
    add_issuer(name, ca, tmp_path)
    before = snapshot(env, name)
    cert, key = ca.write(tmp_path / "again")
    capsys.readouterr()
    assert run("issuer", "add", "--name", f"{name}-other", "--cert", str(cert), "--key",
               str(key)) == 1
    key_hash = bytes(fetch(env, "SELECT key_sha256 FROM issuers WHERE name = $1",
                           name)[0][0]).hex()
    assert one_line(capsys) == (
        f"revoc: error: this CA (subject CN=Edge CA,O=revoc tests,C=XX, key SHA-256 {key_hash}) "
        f"is already registered as issuer '{name}'"
    )
    assert snapshot(env, name) == before


def test_a_reissued_ca_certificate_is_the_same_ca(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Identity is subject and key (what a CertID hashes), not the certificate's bytes."""
    add_issuer(name, ca, tmp_path)
    renewed = make_ca("Edge CA", key=ca.key, serial=2,
                      not_after=datetime(2040, 1, 1, tzinfo=UTC))
    assert renewed.cert_der != ca.cert_der
    before = snapshot(env, name)
    cert, key = renewed.write(tmp_path / "renewed")
    capsys.readouterr()
    assert run("issuer", "add", "--name", f"{name}-r", "--cert", str(cert), "--key",
               str(key)) == 1
    assert f"is already registered as issuer '{name}'" in one_line(capsys)
    assert snapshot(env, name) == before
    # --replace under the first name takes the renewed certificate and other settings.
    assert run("issuer", "add", "--name", name, "--cert", str(cert), "--key", str(key),
               "--replace", "--profile", "br") == 0
    stored = fetch(env, "SELECT cert_der, profile FROM issuers WHERE name = $1", name)[0]
    assert bytes(stored[0]) == renewed.cert_der and stored[1] == "br"


@pytest.mark.parametrize("change", ["key", "subject"])
def test_replace_may_not_change_the_ca_identity(
    env: str, name: str, ca: Party, tmp_path: Path, change: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_issuer(name, ca, tmp_path)
    other = make_ca("Edge CA") if change == "key" else make_ca("Edge CA 2", key=ca.key)
    before = snapshot(env, name)
    cert, key = other.write(tmp_path / "other")
    capsys.readouterr()
    assert run("issuer", "add", "--name", name, "--cert", str(cert), "--key", str(key),
               "--replace") == 1
    assert (f"--replace may not change the CA's subject or key (the CertID identity): issuer "
            f"'{name}' is subject CN=Edge CA,O=revoc tests,C=XX, key SHA-256 ") in one_line(capsys)
    assert snapshot(env, name) == before


async def test_concurrent_second_registration_names_the_winner(
    env: str, pool: asyncpg.Pool, name: str, ca: Party, tmp_path: Path
) -> None:
    """The race the check cannot see: another session inserts the same CA and commits after
    our check. The unique index stops our insert, and the error is the same clear one."""
    cert, key = ca.write(tmp_path)
    request = admin.IssuerRequest(f"{name}-late", str(cert), key_path=str(key))
    winner_args = admin.prepare_issuer(admin.IssuerRequest(name, str(cert), key_path=str(key)))
    from revoc.queries import queries

    async with pool.acquire() as winner, pool.acquire() as late:
        transaction = winner.transaction()
        await transaction.start()
        try:
            await winner.execute(queries()["issuer_insert"], *winner_args)
            late_pid = await late.fetchval("SELECT pg_backend_pid()")
            attempt = asyncio.create_task(admin.add_issuer(late, request))
            deadline = asyncio.get_running_loop().time() + 10
            # Poll until the late insert waits on the winner's uncommitted index entry.
            while not await pool.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                late_pid):
                assert not attempt.done(), attempt
                assert asyncio.get_running_loop().time() < deadline, "never blocked"
                await asyncio.sleep(0.01)
        finally:
            await transaction.commit()
        with pytest.raises(admin.AdminError) as refused:
            await asyncio.wait_for(attempt, 10)
    assert not isinstance(refused.value, admin.InputError)
    assert str(refused.value).endswith(f"is already registered as issuer '{name}'")
    names = await pool.fetch("SELECT name FROM issuers WHERE name LIKE $1", f"{name}%")
    assert [r[0] for r in names] == [name]


# ------------------------------------------------------------------ CRL scope from the CDP


def test_unsharded_issuer_stores_the_shard_its_certificates_name(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 point 5: the certificate says on which CRL it is listed. A CDP ending in
    /{issuer}/{k}.crl is scope k even while the issuer is unsharded (so a later --crl-shards
    cannot take it off every CRL); any other CDP, or none, is the issuer-wide CRL."""
    add_issuer(name, ca, tmp_path)
    cases = {
        0x41: (f"http://cdn.example/crl/{name}/3.crl", 3),
        0x42: (f"http://cdn.example/crl/{name}.crl", None),
        0x43: (None, None),
        0x44: ("http://cdn.example/crl/another-ca/1.crl", None),
    }
    for serial, (url, shard) in cases.items():
        kw = {"crl_url": url} if url else {}
        add_leaf(name, ca, serial, tmp_path, **kw)
        stored = row(env, name, serial)
        assert (stored["crl_url"], stored["shard"]) == (url, shard), hex(serial)
    big = tmp_path / "big.pem"
    big.write_bytes(make_leaf(ca, 0x45, crl_url=f"http://x/crl/{name}/10000.crl").cert_pem)
    before = snapshot(env, name)
    capsys.readouterr()
    assert run("cert", "add", "--issuer", name, str(big)) == 1
    assert "shard numbers stay below 10000" in one_line(capsys)
    assert snapshot(env, name) == before


def test_sharded_issuer_still_refuses_certificates_that_name_no_shard(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_issuer(name, ca, tmp_path, "--crl-shards", "2")
    before = snapshot(env, name)
    for serial, kw in [(0x51, {}), (0x52, {"crl_url": f"http://cdn.example/crl/{name}.crl"}),
                       (0x53, {"crl_url": f"http://cdn.example/crl/{name}/2.crl"})]:
        path = tmp_path / f"{serial:x}.pem"
        path.write_bytes(make_leaf(ca, serial, **kw).cert_pem)  # type: ignore[arg-type]
        capsys.readouterr()
        assert run("cert", "add", "--issuer", name, str(path)) == 1
        assert ("does not end in" in (line := one_line(capsys))
                or "not below --crl-shards 2" in line)
    assert snapshot(env, name) == before


def test_cert_add_refuses_a_certificate_with_an_unusable_serial(
    env: str, name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate with a 21-octet serial (OpenSSL issues one if told to) breaks RFC 5280
    4.1.2.2; it is refused before anything is written."""
    add_issuer(name, ca, tmp_path)
    ca_cert, ca_key = ca.write(tmp_path / "openssl")
    leaf_key, csr, path = tmp_path / "l.key", tmp_path / "l.csr", tmp_path / "long.pem"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(leaf_key), "-subj",
                    "/CN=long-serial", "-out", str(csr)], check=True, capture_output=True,
                   timeout=30)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey",
                    str(ca_key), "-set_serial", "0x01" + "00" * 20, "-days", "30", "-out",
                    str(path)], check=True, capture_output=True, timeout=30)
    assert x509.load_pem_x509_certificate(path.read_bytes()).serial_number == 1 << 160
    before = snapshot(env, name)
    capsys.readouterr()
    assert run("cert", "add", "--issuer", name, str(path)) == 2
    assert f"{path}: serial {1 << 160:X} is longer than 20 octets" in one_line(capsys)
    assert snapshot(env, name) == before
