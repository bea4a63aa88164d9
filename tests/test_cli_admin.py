"""The admin commands of INTERFACE.md against a real PostgreSQL: issuer add, cert add/revoke/unhold.

Most tests call `revoc.cli.main` in-process (fast); a few run the installed console script to
check what a user sees. Each test uses its own issuer name, so tests do not interfere.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as x509_ocsp

from revoc.cli import main
from revoc.der.asn1 import integer_content
from revoc.model import HashAlgorithm
from tests.cli_session import fetch, run
from tests.pki import Party, make_ca, make_leaf, make_ocsp_responder

_names = itertools.count(1)


@pytest.fixture()
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REVOC_DATABASE_URL", database_url)
    return database_url


@pytest.fixture()
def issuer_name() -> str:
    return f"ca{os.getpid()}-{next(_names)}"


@pytest.fixture()
def ca() -> Party:
    """A fresh CA per test: a CA (subject and key) can be registered once (issuers_identity)."""
    return make_ca("Admin Test CA")


@pytest.fixture()
def ca_files(ca: Party, tmp_path: Path) -> tuple[Path, Path]:
    return ca.write(tmp_path)


def _add_issuer(name: str, ca_files: tuple[Path, Path], *extra: str) -> None:
    cert, key = ca_files
    assert run("issuer", "add", "--name", name, "--cert", str(cert), "--key", str(key), *extra) == 0


def _leaf_file(ca: Party, serial: int, tmp_path: Path, **kw: str) -> Path:
    path = tmp_path / f"leaf-{serial:x}.pem"
    path.write_bytes(make_leaf(ca, serial, **kw).cert_pem)  # type: ignore[arg-type]
    return path


def _row(dsn: str, issuer: str, serial: int) -> asyncpg.Record:
    rows = fetch(
        dsn,
        "SELECT c.* FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
        "WHERE i.name = $1 AND c.serial = $2",
        issuer,
        integer_content(serial),
    )
    assert len(rows) == 1
    return rows[0]


# ------------------------------------------------------------------ help and usage


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [
        [],
        ["demo"],
        ["db"],
        ["db", "upgrade"],
        ["db", "start"],
        ["db", "stop"],
        ["db", "status"],
        ["issuer"],
        ["issuer", "add"],
        ["issuer", "list"],
        ["cert"],
        ["cert", "add"],
        ["cert", "import"],
        ["cert", "revoke"],
        ["cert", "unhold"],
        ["cert", "shard"],
        ["serve"],
        ["presign"],
        ["publish"],
    ]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: revoc" in capsys.readouterr().out


def test_console_script_help_and_usage_error() -> None:
    script = Path(sys.executable).parent / "revoc"
    ok = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "cert" in ok.stdout
    bad = subprocess.run(
        [str(script), "cert", "revoke", "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REVOC_PORT", "eighty"),
        ("REVOC_DATABASE_URL", "mysql://x"),
        ("REVOC_OCSP_VALIDITY", "20d"),
        ("REVOC_PUBLIC_URL", "https://x.example"),
    ],
)
def test_bad_setting_is_one_line_exit_2(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert run("issuer", "list") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and variable in err


def test_every_setting_is_documented() -> None:
    """Each REVOC_* variable the code reads is in the README's settings table."""
    from revoc.settings import SPECS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [spec.name for spec in SPECS if f"`REVOC_{spec.name.upper()}`" not in readme]
    assert not missing, missing


def test_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from revoc.settings import load_settings

    settings = load_settings({"REVOC_PORT": "9000"}, {"port": 9100})
    assert settings.port == 9100
    assert load_settings({"REVOC_PORT": "9000"}, {"port": None}).port == 9000


def test_schema_must_be_current(
    monkeypatch: pytest.MonkeyPatch, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("db", "upgrade") == 0
    assert "schema is current" in capsys.readouterr().out


# ------------------------------------------------------------------ issuer add


def test_issuer_add_records_certid_hashes(
    env: str, issuer_name: str, ca: Party, ca_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """CONFORMANCE OCSP-REQ-3: the stored hashes equal the ones OpenSSL puts in a CertID."""
    _add_issuer(issuer_name, ca_files)
    leaf = _leaf_file(ca, 0x1234, tmp_path)
    row = fetch(env, "SELECT * FROM issuers WHERE name = $1", issuer_name)[0]
    for algorithm, flag in [
        (HashAlgorithm.SHA1, "-sha1"),
        (HashAlgorithm.SHA256, "-sha256"),
        (HashAlgorithm.SHA384, "-sha384"),
        (HashAlgorithm.SHA512, "-sha512"),
    ]:
        req = tmp_path / f"req{flag}.der"
        subprocess.run(
            [
                "openssl",
                "ocsp",
                flag,  # OpenSSL wants the digest before -cert
                "-issuer",
                str(ca_files[0]),
                "-cert",
                str(leaf),
                "-no_nonce",
                "-reqout",
                str(req),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        request = x509_ocsp.load_der_ocsp_request(req.read_bytes())
        assert request.issuer_name_hash == bytes(row[f"name_{algorithm.hashlib_name}"])
        assert request.issuer_key_hash == bytes(row[f"key_{algorithm.hashlib_name}"])


def test_issuer_add_twice_needs_replace(
    env: str, issuer_name: str, ca_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _add_issuer(issuer_name, ca_files)
    cert, key = ca_files
    assert run("issuer", "add", "--name", issuer_name, "--cert", str(cert), "--key", str(key)) == 1
    assert "exists already" in capsys.readouterr().err
    _add_issuer(issuer_name, ca_files, "--replace", "--crl-shards", "4")
    assert fetch(env, "SELECT crl_shards FROM issuers WHERE name=$1", issuer_name)[0][0] == 4


def test_issuer_add_refuses_non_ca(
    env: str, issuer_name: str, ca: Party, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = make_leaf(ca, 77)
    cert, key = leaf.write(tmp_path)
    assert run("issuer", "add", "--name", issuer_name, "--cert", str(cert), "--key", str(key)) == 1
    assert "not a CA certificate" in capsys.readouterr().err


def test_issuer_add_refuses_mismatched_key(
    env: str,
    issuer_name: str,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _other_cert, other_key = make_ca("Other CA").write(tmp_path / "other")
    assert (
        run(
            "issuer",
            "add",
            "--name",
            issuer_name,
            "--cert",
            str(ca_files[0]),
            "--key",
            str(other_key),
        )
        == 1
    )
    assert "does not match" in capsys.readouterr().err


def test_issuer_add_refuses_readable_key(
    env: str, issuer_name: str, ca_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(ca_files[1], 0o644)
    assert (
        run(
            "issuer",
            "add",
            "--name",
            issuer_name,
            "--cert",
            str(ca_files[0]),
            "--key",
            str(ca_files[1]),
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "readable" in err and len(err.strip().splitlines()) == 1


def test_issuer_add_with_delegated_responder(
    env: str, issuer_name: str, ca: Party, ca_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """CONFORMANCE OCSP-SIGNER-1/2: a delegate issued by this CA with EKU OCSPSigning."""
    responder_cert, responder_key = make_ocsp_responder(ca).write(tmp_path / "r")
    assert (
        run(
            "issuer",
            "add",
            "--name",
            issuer_name,
            "--cert",
            str(ca_files[0]),
            "--ocsp-cert",
            str(responder_cert),
            "--ocsp-key",
            str(responder_key),
        )
        == 0
    )
    row = fetch(env, "SELECT key_path, ocsp_key_path FROM issuers WHERE name=$1", issuer_name)[0]
    assert row["key_path"] is None and row["ocsp_key_path"] == str(responder_key.resolve())


def test_issuer_add_refuses_foreign_or_non_ocsp_delegate(
    env: str,
    issuer_name: str,
    ca: Party,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """OCSP-SIGNER-1: a sibling CA's responder is refused; OCSP-SIGNER-2: a leaf without the
    OCSPSigning EKU is refused."""
    sibling = make_ca("Sibling CA")
    foreign_cert, foreign_key = make_ocsp_responder(sibling).write(tmp_path / "f")
    assert (
        run(
            "issuer",
            "add",
            "--name",
            issuer_name,
            "--cert",
            str(ca_files[0]),
            "--ocsp-cert",
            str(foreign_cert),
            "--ocsp-key",
            str(foreign_key),
        )
        == 1
    )
    assert "not issued by this CA" in capsys.readouterr().err
    plain_cert, plain_key = make_leaf(ca, 99).write(tmp_path / "p")
    assert (
        run(
            "issuer",
            "add",
            "--name",
            issuer_name,
            "--cert",
            str(ca_files[0]),
            "--ocsp-cert",
            str(plain_cert),
            "--ocsp-key",
            str(plain_key),
        )
        == 1
    )
    assert "OCSPSigning" in capsys.readouterr().err


def test_ca_without_digital_signature_needs_delegate(
    env: str, issuer_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CONFORMANCE OCSP-SIGNER-5."""
    cert, key = make_ca("No DS CA", digital_signature=False).write(tmp_path)
    assert run("issuer", "add", "--name", issuer_name, "--cert", str(cert), "--key", str(key)) == 1
    assert "digitalSignature" in capsys.readouterr().err


# ------------------------------------------------------------------ certificates


def test_cert_add_revoke_rules(
    env: str,
    issuer_name: str,
    ca: Party,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_issuer(issuer_name, ca_files)
    serial = 0x80AB_CDEF  # high bit set: stored with a leading 0x00 octet (OCSP-REQ-5)
    leaf = _leaf_file(ca, serial, tmp_path)
    assert run("cert", "add", "--issuer", issuer_name, str(leaf)) == 0
    good = _row(env, issuer_name, serial)
    assert good["status"] == "good" and good["crl_entry"] is None
    assert good["not_after"] == datetime(2035, 1, 1, tzinfo=UTC)

    assert (
        run(
            "cert",
            "revoke",
            "--issuer",
            issuer_name,
            "--serial",
            f"{serial:x}",
            "--reason",
            "superseded",
            "--revoked-at",
            "2026-01-02T03:04:05Z",
        )
        == 0
    )
    revoked = _row(env, issuer_name, serial)
    assert revoked["status"] == "revoked" and revoked["reason"] == 4
    assert revoked["change_seq"] > good["change_seq"]
    # The stored entry is what an outside parser reads as this revocation.
    entry = asn1_crl.RevokedCertificate.load(bytes(revoked["crl_entry"]))
    assert entry["user_certificate"].native == serial
    assert entry["revocation_date"].native == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert entry.crl_reason_value.native == "superseded"

    # A second revocation may only raise the reason to keyCompromise (boulder#8096).
    capsys.readouterr()
    assert (
        run(
            "cert",
            "revoke",
            "--issuer",
            issuer_name,
            "--serial",
            f"{serial:x}",
            "--reason",
            "affiliationChanged",
        )
        == 1
    )
    assert "already revoked" in capsys.readouterr().err
    assert (
        run(
            "cert",
            "revoke",
            "--issuer",
            issuer_name,
            "--serial",
            f"{serial:x}",
            "--reason",
            "keyCompromise",
            "--invalidity-date",
            "2026-01-01T00:00:00Z",
        )
        == 0
    )
    raised = _row(env, issuer_name, serial)
    assert raised["reason"] == 1 and raised["revoked_at"] == revoked["revoked_at"]
    entry = asn1_crl.RevokedCertificate.load(bytes(raised["crl_entry"]))
    assert entry.invalidity_date_value.native == datetime(2026, 1, 1, tzinfo=UTC)
    assert (
        run(
            "cert",
            "revoke",
            "--issuer",
            issuer_name,
            "--serial",
            f"{serial:x}",
            "--reason",
            "keyCompromise",
        )
        == 1
    )


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["--serial", "zz", "--reason", "keyCompromise"], "not hexadecimal", 2),
        (["--serial", "abc", "--reason", "sillyReason"], "unknown revocation reason", 2),
        (["--serial", "abc", "--reason", "removeFromCRL"], "unhold", 2),
        (
            ["--serial", "abc", "--reason", "keyCompromise", "--revoked-at", "yesterday"],
            "ISO 8601",
            2,
        ),
        (
            ["--serial", "abc", "--reason", "keyCompromise", "--revoked-at", "2999-01-01"],
            "future",
            2,
        ),
        (["--serial", "abcdef", "--reason", "keyCompromise"], "not a known certificate", 1),
    ],
)
def test_revoke_mistakes_are_one_line(
    env: str,
    issuer_name: str,
    ca_files: tuple[Path, Path],
    argv: list[str],
    message: str,
    code: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Malformed values exit 2, refusals exit 1 (INTERFACE.md exit status)."""
    _add_issuer(issuer_name, ca_files)
    capsys.readouterr()
    assert run("cert", "revoke", "--issuer", issuer_name, *argv) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_unknown_issuer(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run("cert", "revoke", "--issuer", "nope", "--serial", "01", "--reason", "keyCompromise")
        == 1
    )
    assert "no issuer named 'nope'" in capsys.readouterr().err


def test_hold_and_unhold(
    env: str,
    issuer_name: str,
    ca: Party,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_issuer(issuer_name, ca_files)
    leaf = _leaf_file(ca, 0x4242, tmp_path)
    assert run("cert", "add", "--issuer", issuer_name, str(leaf)) == 0
    assert run("cert", "unhold", "--issuer", issuer_name, "--serial", "4242") == 1
    assert "not on hold" in capsys.readouterr().err
    assert (
        run(
            "cert",
            "revoke",
            "--issuer",
            issuer_name,
            "--serial",
            "4242",
            "--reason",
            "certificateHold",
        )
        == 0
    )
    held = _row(env, issuer_name, 0x4242)
    assert run("cert", "unhold", "--issuer", issuer_name, "--serial", "4242") == 0
    released = _row(env, issuer_name, 0x4242)
    assert released["status"] == "good" and released["hold_released"]
    assert released["crl_entry"] is None and released["change_seq"] > held["change_seq"]


def test_br_profile_forbids_holds_and_reasons(
    env: str,
    issuer_name: str,
    ca: Party,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CONFORMANCE BR-10 (allowed reasons) and BR-11 (no certificateHold, no unhold)."""
    _add_issuer(issuer_name, ca_files, "--profile", "br")
    assert run("cert", "add", "--issuer", issuer_name, str(_leaf_file(ca, 0x51, tmp_path))) == 0
    capsys.readouterr()
    for reason in ("certificateHold", "cACompromise", "aACompromise"):
        assert (
            run("cert", "revoke", "--issuer", issuer_name, "--serial", "51", "--reason", reason)
            == 1
        )
        assert "br profile" in capsys.readouterr().err
    assert run("cert", "unhold", "--issuer", issuer_name, "--serial", "51") == 1
    assert "allows no holds" in capsys.readouterr().err
    for reason in ("unspecified", "keyCompromise"):
        assert (
            run("cert", "revoke", "--issuer", issuer_name, "--serial", "51", "--reason", reason)
            == 0
        )
    assert _row(env, issuer_name, 0x51)["reason"] == 1


def test_cert_add_refuses_foreign_certificate(
    env: str,
    issuer_name: str,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_issuer(issuer_name, ca_files)
    other = make_ca("Other Issuer")
    assert run("cert", "add", "--issuer", issuer_name, str(_leaf_file(other, 0x99, tmp_path))) == 1
    assert "was not issued by" in capsys.readouterr().err


def test_sharded_issuer_reads_distribution_points(
    env: str,
    issuer_name: str,
    ca: Party,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CONFORMANCE SHARD-2: the shard comes from the certificate's CDP and is stored."""
    _add_issuer(issuer_name, ca_files, "--crl-shards", "3")
    url = f"http://cdn.example/crl/{issuer_name}/2.crl"
    leaf = _leaf_file(ca, 0x777, tmp_path, crl_url=url)
    assert run("cert", "add", "--issuer", issuer_name, str(leaf)) == 0
    row = _row(env, issuer_name, 0x777)
    assert row["shard"] == 2 and row["crl_url"] == url
    bad = _leaf_file(ca, 0x778, tmp_path, crl_url=f"http://cdn.example/crl/{issuer_name}/3.crl")
    capsys.readouterr()
    assert run("cert", "add", "--issuer", issuer_name, str(bad)) == 1
    assert "not below" in capsys.readouterr().err
    none = _leaf_file(ca, 0x779, tmp_path)
    assert run("cert", "add", "--issuer", issuer_name, str(none)) == 1
    assert run("cert", "shard", "--issuer", issuer_name, "--serial", "a") == 0
    assert capsys.readouterr().out.strip().endswith(f"/crl/{issuer_name}/1.crl")


def test_changes_send_notify(
    env: str, issuer_name: str, ca: Party, ca_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every change NOTIFYs cert_changed with <issuer id>:<serial hex>."""
    _add_issuer(issuer_name, ca_files)
    leaf = _leaf_file(ca, 0xBEEF, tmp_path)

    async def scenario() -> list[str]:
        received: list[str] = []
        both = asyncio.Event()

        def on_notify(*args: object) -> None:
            received.append(str(args[3]))
            if len(received) == 2:
                both.set()

        listener = await asyncpg.connect(env)
        await listener.add_listener("cert_changed", on_notify)
        try:
            await asyncio.to_thread(run, "cert", "add", "--issuer", issuer_name, str(leaf))
            await asyncio.to_thread(
                run,
                "cert",
                "revoke",
                "--issuer",
                issuer_name,
                "--serial",
                "BEEF",
                "--reason",
                "keyCompromise",
            )
            await asyncio.wait_for(both.wait(), timeout=5)
        finally:
            await listener.close()
        return received

    received = asyncio.run(scenario())
    issuer_id = fetch(env, "SELECT id FROM issuers WHERE name=$1", issuer_name)[0][0]
    assert received == [f"{issuer_id}:00BEEF"] * 2


# ------------------------------------------------------------------ OpenSSL index import


@pytest.fixture()
def openssl_ca(ca: Party, tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """A real `openssl ca` database with valid, revoked (several reasons) and held entries."""
    base = tmp_path / "opensslca"
    base.mkdir()
    cert, key = ca.write(base)
    (base / "index.txt").write_text("")
    (base / "serial").write_text("1000\n")
    (base / "openssl.cnf").write_text(f"""
[ca]
default_ca = test
[test]
dir = {base}
database = $dir/index.txt
new_certs_dir = $dir
certificate = {cert}
private_key = {key}
serial = $dir/serial
default_md = sha256
policy = anything
default_days = 30
unique_subject = no
[anything]
commonName = supplied
""")
    serials: list[int] = []
    for index in range(6):
        subject = f"/CN=device{index}"
        csr_key = base / f"d{index}.key"
        csr = base / f"d{index}.csr"
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(csr_key),
                "-subj",
                subject,
                "-out",
                str(csr),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        out = base / f"d{index}.pem"
        subprocess.run(
            [
                "openssl",
                "ca",
                "-batch",
                "-config",
                str(base / "openssl.cnf"),
                "-in",
                str(csr),
                "-out",
                str(out),
                "-notext",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        serials.append(x509.load_pem_x509_certificate(out.read_bytes()).serial_number)
    revocations = [
        ["-crl_reason", "keyCompromise", "-crl_compromise", "20260101000000Z"],
        ["-crl_reason", "superseded"],
        ["-crl_hold", "holdInstructionReject"],
        [],
    ]
    for index, extra in enumerate(revocations, 1):
        subprocess.run(
            [
                "openssl",
                "ca",
                "-batch",
                "-config",
                str(base / "openssl.cnf"),
                "-revoke",
                str(base / f"d{index}.pem"),
                *extra,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    yield base / "index.txt", serials


def test_import_openssl_index(
    env: str, issuer_name: str, ca_files: tuple[Path, Path], openssl_ca: tuple[Path, list[int]]
) -> None:
    index, serials = openssl_ca
    _add_issuer(issuer_name, ca_files)
    assert run("cert", "import", "--issuer", issuer_name, "--openssl-index", str(index)) == 0
    expected = {
        0: ("good", None),
        1: ("revoked", 1),
        2: ("revoked", 4),
        3: ("revoked", 6),
        4: ("revoked", 0),
        5: ("good", None),
    }
    for position, (status, reason) in expected.items():
        row = _row(env, issuer_name, serials[position])
        assert (row["status"], row["reason"]) == (status, reason), position
    compromised = _row(env, issuer_name, serials[1])
    assert compromised["invalidity_date"] == datetime(2026, 1, 1, tzinfo=UTC)
    # The stored CRL entries are what `openssl ca -gencrl` lists for the same database.
    rows = fetch(
        env,
        "SELECT crl_entry FROM certificates c JOIN issuers i ON i.id=c.issuer_id "
        "WHERE i.name=$1 AND status='revoked'",
        issuer_name,
    )
    ours = {asn1_crl.RevokedCertificate.load(bytes(r[0]))["user_certificate"].native for r in rows}
    config = index.parent / "openssl.cnf"
    crl_pem = subprocess.run(
        ["openssl", "ca", "-gencrl", "-config", str(config), "-crldays", "1"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    theirs = {r.serial_number for r in x509.load_pem_x509_crl(crl_pem)}
    assert ours == theirs
    for revoked in x509.load_pem_x509_crl(crl_pem):
        row = _row(env, issuer_name, revoked.serial_number)
        assert row["revoked_at"] == revoked.revocation_date_utc
    # A second import changes nothing and never un-revokes.
    assert run("cert", "import", "--issuer", issuer_name, "--openssl-index", str(index)) == 0
    assert _row(env, issuer_name, serials[1])["change_seq"] == compromised["change_seq"]


def test_import_rejects_bad_line_atomically(
    env: str,
    issuer_name: str,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_issuer(issuer_name, ca_files)
    index = tmp_path / "index.txt"
    index.write_text(
        "V\t300101000000Z\t\t0A\tunknown\t/CN=a\nX\t300101000000Z\t\t0B\tunknown\t/CN=b\n"
    )
    assert run("cert", "import", "--issuer", issuer_name, "--openssl-index", str(index)) == 2
    assert "index.txt:2" in capsys.readouterr().err
    assert (
        fetch(
            env,
            "SELECT count(*) FROM certificates c JOIN issuers i ON i.id=c.issuer_id "
            "WHERE i.name=$1",
            issuer_name,
        )[0][0]
        == 0
    )


def test_import_sharded_uses_serial_mod_k(
    env: str, issuer_name: str, ca_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _add_issuer(issuer_name, ca_files, "--crl-shards", "4")
    index = tmp_path / "index.txt"
    index.write_text(
        "".join(f"V\t300101000000Z\t\t{s:02X}\tunknown\t/CN=x\n" for s in range(10, 20))
    )
    assert run("cert", "import", "--issuer", issuer_name, "--openssl-index", str(index)) == 0
    for serial in range(10, 20):
        assert _row(env, issuer_name, serial)["shard"] == serial % 4


def test_hash_helper_matches_cryptography(ca: Party) -> None:
    """Guard for the CertID hash inputs used above (OCSP-REQ-3), checked by cryptography."""
    leaf = make_leaf(ca, 5)
    request = (
        x509_ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, ca.cert, hashes.SHA256()).build()
    )
    from revoc.signing import subject_public_key_bits

    assert request.issuer_key_hash == HashAlgorithm.SHA256.digest(subject_public_key_bits(ca.cert))
