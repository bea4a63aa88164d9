"""Every setting of revoc, read once from `REVOC_*` variables and flags into a frozen dataclass.

Each setting is declared once in `SPECS` with its type, default and help. The CLI turns the specs
of the groups a command uses into flags; `load_settings` merges environment and flags (flags win),
validates every value and raises `SettingsError` with one line naming the setting at fault.
Nothing below this module reads `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from revoc.model import HashAlgorithm

ENV_PREFIX = "REVOC_"


class SettingsError(ValueError):
    """A setting has a value revoc cannot use; the message is one line for the user."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_hashes(text: str) -> tuple[HashAlgorithm, ...]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if not parts:
        raise ValueError("expected a comma-separated list such as sha1,sha256")
    algorithms = tuple(dict.fromkeys(HashAlgorithm.from_name(p) for p in parts))
    return algorithms


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds, with an optional unit suffix: 90, 90s, 15m, 12h, 4d."""
    cleaned = text.strip().lower()
    factor = 1
    if cleaned and cleaned[-1] in _UNITS:
        factor = _UNITS[cleaned[-1]]
        cleaned = cleaned[:-1]
    if not cleaned.isdigit():
        raise ValueError("expected a whole number with an optional unit s, m, h or d "
                         "(e.g. 90s, 15m, 12h, 4d)")
    return int(cleaned) * factor


def format_duration(seconds: int) -> str:
    """The shortest exact spelling: 345600 -> 4d, 300 -> 5m, 90 -> 90s."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"



def redact_dsn(dsn: str) -> str:
    """`dsn` with any password replaced by ``***`` (in the authority and in ``?password=``)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = "&".join(
        f"{key}=***" if key.lower() == "password" else item
        for item in parts.query.split("&") if item
        for key in [item.split("=", 1)[0]])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _parse_listen(text: str) -> str | None:
    from revoc.embedded_layout import parse_listen  # one parser for the setting and the server

    if not text.strip() or text.strip().lower() in {"none", "off"}:
        return None
    parse_listen(text)
    return text.strip()


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is named, parsed, checked and shown in --help."""

    name: str
    parse: Callable[[str], Any]
    help: str
    groups: tuple[str, ...]
    check: Callable[[Any], str | None] = lambda _value: None
    metavar: str | None = None
    default: str | None = None  # shown in --help when the plain default says too little
    shown: Callable[[Any], str] = repr  # how a bad value is echoed (never a password)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _at_least(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be at least {minimum}"

    return check


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _check_dsn(value: Any) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in {"postgresql", "postgres"}:
        return "must be a postgresql:// URL"
    for host in parts.netloc.rpartition("@")[2].split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        _, colon, number = port.rpartition(":")
        if colon and number and not (number.isdigit() and 0 < int(number) < 65536):
            return f"port {number!r} is not a number from 1 to 65535"
    return None


def _show_dsn(value: Any) -> str:
    return repr(redact_dsn(str(value)))


def _check_http_url(value: Any) -> str | None:
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.netloc:
        # CONFORMANCE HTTP-CRL-2 / OCSP-HTTP-11: revocation URLs are plain http.
        return "must be an http:// URL (revocation URLs must not need TLS)"
    return None


def _check_purge_url(value: Any) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http:// or https:// URL"
    return None


def _check_ocsp_validity(value: Any) -> str | None:
    # CONFORMANCE BR-4: between 8 hours and 10 days, counted inclusively in seconds, so
    # nextUpdate - thisUpdate may be at most 10 days less one second.
    if not 8 * 3600 <= value <= 10 * 86400 - 1:
        return "must be between 8h and 10d (CA/B Forum BR 4.9.9)"
    return None


def _check_crl_validity(value: Any) -> str | None:
    # CONFORMANCE BR-3: nextUpdate at most 10 days after thisUpdate for subscriber CRLs.
    if not 3600 <= value <= 10 * 86400:
        return "must be between 1h and 10d (CA/B Forum BR 7.2)"
    return None


GLOBAL = ("global",)
SERVE = ("serve",)
PRESIGN = ("presign",)
PUBLISH = ("publish",)

DB = ("db",)  # every command that opens the database
EMBEDDED = ("embedded",)  # commands that may start the embedded server
URLS = ("urls",)  # commands that write or print public URLs

SPECS: tuple[Spec, ...] = (
    Spec("database_url", str, "PostgreSQL DSN; without it the embedded server under --home",
         DB, _check_dsn, "DSN", "the embedded server", _show_dsn),
    Spec("read_database_url", str, "PostgreSQL DSN `serve` reads from (a streaming replica, "
         "or several hosts in one multi-host DSN); the writer's DSN still gets its heartbeats",
         SERVE, _check_dsn, "DSN", "the database URL", _show_dsn),
    Spec("db_partitions", int, "hash partitions of certificates, ocsp_responses and "
         "ocsp_pending by (issuer, serial) that `revoc db upgrade` converts plain tables to "
         "(0: leave them as they are)", ("partition",), _between(0, 1024), "N"),
    Spec("home", Path, "directory of the embedded PostgreSQL, demo files and default CRL output",
         DB, metavar="DIR"),
    Spec("pg_listen", _parse_listen, "also listen on TCP at HOST[:PORT] when starting the "
         "embedded server (none: its Unix socket only)", EMBEDDED, metavar="HOST[:PORT]",
         default="none"),
    Spec("pg_user", str, "unprivileged account the embedded server runs as when revoc runs as "
         "root (created if missing)", EMBEDDED, metavar="USER"),
    Spec("public_url", lambda s: s.rstrip("/"), "base URL clients use to reach this service",
         URLS, _check_http_url, "URL"),
    Spec("log_level", str.upper, "DEBUG, INFO, WARNING or ERROR", GLOBAL, metavar="LEVEL",
         check=lambda v: None if v in {"DEBUG", "INFO", "WARNING", "ERROR"} else "unknown level"),
    Spec("host", str, "address to listen on", SERVE, metavar="H"),
    Spec("port", int, "TCP port to listen on", SERVE, _between(1, 65535), "P"),
    Spec("workers", int, "worker processes", ("serve_workers",), _between(1, 256), "W"),
    Spec("max_request_bytes", int, "largest OCSP request accepted (POST body or GET path)",
         SERVE, _between(256, 1 << 20), "BYTES"),
    Spec("cache_max_entries", int, "OCSP responses held in memory per worker", SERVE,
         _at_least(0), "N"),
    Spec("cache_max_bytes", int, "bytes of OCSP responses held in memory per worker", SERVE,
         _at_least(0), "BYTES"),
    Spec("cache_warm", _parse_bool, "fill the OCSP cache from PostgreSQL in bulk at start-up, "
         "in the background, up to its caps (false: only cache misses fill it)", SERVE,
         metavar="BOOL"),
    Spec("crl_max_age", parse_duration, "Cache-Control max-age cap for CRLs", SERVE,
         _at_least(0), "DURATION"),
    Spec("live_signing", _parse_bool,
         "sign on demand with the issuer's OCSP key (nonces, multi-CertID, misses)",
         SERVE, metavar="BOOL"),
    Spec("fast_lane", _parse_bool,
         "answer OCSP GET and POST in the HTTP protocol, before ASGI (false: every request "
         "through the ASGI app)", SERVE, metavar="BOOL"),
    # Edge limits (responder/edge.py): what one client may cost a worker.
    Spec("max_request_line_bytes", int, "longest request target accepted (longer: HTTP 414 "
         "and close)", SERVE, _between(256, 1 << 20), "BYTES"),
    Spec("max_header_bytes", int, "largest request head (request line and header lines) "
         "accepted (larger: HTTP 431 and close)", SERVE, _between(1024, 1 << 24), "BYTES"),
    Spec("max_headers", int, "most header lines in one request (more: HTTP 431 and close)",
         SERVE, _between(8, 10_000), "N"),
    Spec("request_timeout", parse_duration, "time a client has to send a whole request from "
         "its first byte (then HTTP 408 and close)", SERVE, _between(1, 3600), "DURATION"),
    Spec("keepalive_timeout", parse_duration, "idle time after which a connection (kept alive, "
         "or new and silent) is closed", SERVE, _between(1, 3600), "DURATION"),
    Spec("max_connections", int, "open connections per worker; past it the longest-idle one is "
         "closed, or the new one refused with 503 (capped by the file-descriptor limit)",
         SERVE, _between(16, 1 << 22), "N"),
    Spec("ocsp_validity", parse_duration, "nextUpdate - thisUpdate of OCSP responses",
         PRESIGN + SERVE, _check_ocsp_validity, "DURATION"),
    Spec("ocsp_backdate", parse_duration, "thisUpdate is this far before signing (clock skew)",
         PRESIGN + SERVE, _between(0, 3600), "DURATION"),
    Spec("ocsp_keep_expired", parse_duration,
         "keep signing a certificate's OCSP answer this long after its notAfter, then drop it "
         "(0: forever)", PRESIGN, _at_least(0), "DURATION"),
    Spec("ocsp_hashes", _parse_hashes, "CertID hash algorithms to pre-sign", PRESIGN,
         metavar="LIST", default="sha1,sha256"),
    Spec("presign_processes", int, "signing processes", PRESIGN, _between(1, 256), "N",
         "the number of cores"),
    Spec("crl_full_interval", parse_duration, "time between full CRLs", PUBLISH,
         _at_least(60), "DURATION"),
    Spec("crl_full_validity", parse_duration, "nextUpdate - thisUpdate of full CRLs", PUBLISH,
         _check_crl_validity, "DURATION"),
    Spec("crl_delta_interval", parse_duration, "time between delta CRLs (0: no deltas)",
         PUBLISH, _at_least(0), "DURATION"),
    Spec("crl_delta_validity", parse_duration, "nextUpdate - thisUpdate of delta CRLs",
         PUBLISH, _check_crl_validity, "DURATION"),
    Spec("crl_delta_on_change", _parse_bool, "publish a delta as soon as a revocation arrives",
         PUBLISH, metavar="BOOL"),
    Spec("crl_full_on_change_delay", parse_duration,
         "re-issue a scope's full CRL at most this long after a change in it; changes within "
         "it share one full CRL (0: at once)", PUBLISH, _between(0, 86400), "DURATION"),
    Spec("crl_br_deltas", _parse_bool,
         "publish delta CRLs (and freshestCRL) for issuers with the br profile too (TLS BR "
         "7.2.2 does not recommend them)", PUBLISH, metavar="BOOL"),
    Spec("crl_size_limit", int, "a CRL larger than this many bytes is logged as a warning and "
         "flagged in /metrics (the Microsoft root program's 10 MB per CRL file)",
         PUBLISH + SERVE + ("plan",), _at_least(1024), "BYTES"),
    Spec("purge_url", str, "CDN purge hook: URLs and cache tags that changed are POSTed "
         "there as JSON after each publication and re-signed OCSP answer (empty: none)",
         PUBLISH, _check_purge_url, "URL"),
    Spec("crl_out", Path, "directory the CRL files are written to", PUBLISH, metavar="DIR",
         default="$REVOC_HOME/crl"),
    Spec("rsa_pss", _parse_bool,
         "sign OCSP responses and CRLs with RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) "
         "instead of PKCS#1 v1.5 when the key is RSA", PRESIGN + SERVE + PUBLISH,
         metavar="BOOL"),
    # `revoc admin-api`: its flags are --host and --port (admin_api/cli.py).
    Spec("admin_host", str, "address the admin API listens on", ("admin_listen",),
         metavar="H"),
    Spec("admin_port", int, "TCP port of the admin API", ("admin_listen",), _between(1, 65535),
         "P"),
    Spec("admin_tls_cert", Path, "serve the admin API over TLS with this certificate (PEM)",
         ("admin_api",), metavar="PEM", default="none: plain HTTP"),
    Spec("admin_tls_key", Path, "private key of --admin-tls-cert (PEM)", ("admin_api",),
         metavar="PEM", default="none"),
    Spec("admin_tls_client_ca", Path, "require a client certificate issued by these CAs "
         "(mutual TLS) on top of the bearer token", ("admin_api",), metavar="PEM",
         default="none: no client certificate asked"),
)

SPECS_BY_NAME: Mapping[str, Spec] = {spec.name: spec for spec in SPECS}


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings, validated. Construct with `load_settings`."""

    database_url: str | None = None
    read_database_url: str | None = None
    db_partitions: int = 0
    home: Path = Path(".revoc")
    pg_listen: str | None = None
    pg_user: str = "revoc-pg"
    public_url: str = "http://127.0.0.1:8080"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_request_bytes: int = 10 * 1024
    cache_max_entries: int = 1_000_000
    cache_max_bytes: int = 1 << 30
    cache_warm: bool = True
    crl_max_age: int = 300
    live_signing: bool = False
    fast_lane: bool = True
    max_request_line_bytes: int = 16 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    request_timeout: int = 10
    keepalive_timeout: int = 5
    max_connections: int = 10_000
    ocsp_validity: int = 4 * 86400
    ocsp_backdate: int = 3600
    ocsp_hashes: tuple[HashAlgorithm, ...] = (HashAlgorithm.SHA1, HashAlgorithm.SHA256)
    ocsp_keep_expired: int = 30 * 86400
    presign_processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    crl_full_interval: int = 86400
    crl_full_validity: int = 7 * 86400
    crl_delta_interval: int = 300
    crl_delta_validity: int = 86400
    crl_delta_on_change: bool = True
    crl_full_on_change_delay: int = 60
    crl_br_deltas: bool = False
    purge_url: str | None = None
    crl_size_limit: int = 10_000_000
    crl_out: Path = Path(".revoc/crl")
    rsa_pss: bool = False
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    admin_tls_client_ca: Path | None = None

    @property
    def refresh_after(self) -> int:
        """Seconds after thisUpdate at which a response is re-signed (CONFORMANCE BR-5)."""
        if self.ocsp_validity < 16 * 3600:
            return self.ocsp_validity // 2
        return min(self.ocsp_validity // 2, 4 * 86400, self.ocsp_validity - 8 * 3600)


def load_settings(
    environ: Mapping[str, str], flags: Mapping[str, Any] | None = None
) -> Settings:
    """Merge defaults, `REVOC_*` variables and flags (flags win) and validate the result.

    `flags` maps setting names to values already parsed by the CLI; None means "not given".
    """
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = environ.get(spec.env)
        if raw is not None and raw != "":
            try:
                values[spec.name] = spec.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{spec.env}={spec.shown(raw)}: {_reason(exc)}") from None
    for name, value in (flags or {}).items():
        if name in SPECS_BY_NAME and value is not None:
            values[name] = value
    for name, value in values.items():
        problem = SPECS_BY_NAME[name].check(value)
        if problem:
            spec = SPECS_BY_NAME[name]
            raise SettingsError(f"{spec.flag} / {spec.env} = {spec.shown(value)}: {problem}")
    settings = Settings(**values)
    if "crl_out" not in values:
        settings = _replace(settings, crl_out=settings.home / "crl")
    problem = schedule_problem(settings) or _admin_tls_problem(settings)
    if problem:
        raise SettingsError(problem)
    return settings


def _admin_tls_problem(settings: Settings) -> str | None:
    if (settings.admin_tls_cert is None) != (settings.admin_tls_key is None):
        return "--admin-tls-cert and --admin-tls-key go together"
    if settings.admin_tls_client_ca is not None and settings.admin_tls_cert is None:
        return "--admin-tls-client-ca needs --admin-tls-cert and --admin-tls-key (mutual TLS)"
    return None


def margin(interval: int) -> int:
    """How long a CRL must outlive the time its successor is due: one more interval for short
    intervals (a failed round is retried), at most an hour for long ones."""
    return min(interval, 3600)


# How often `revoc presign` looks at every response anyway (responder/presign_loop.py
# SWEEP_INTERVAL): a refresh can come this late after it falls due.
PRESIGN_SWEEP_SECONDS = 300


def schedule_problem(settings: Settings) -> str | None:
    """Why these settings cannot keep CRLs and OCSP responses valid, or None.

    Each value may be fine on its own and the combination still fail: a CRL that expires before
    the next one is published leaves relying parties with no valid CRL at all.
    """
    d = format_duration
    full, delta = settings.crl_full_interval, settings.crl_delta_interval
    if delta and delta >= full:
        return (f"--crl-delta-interval ({d(delta)}) must be shorter than --crl-full-interval "
                f"({d(full)})")
    if settings.crl_full_validity < full + margin(full):
        return (f"--crl-full-validity ({d(settings.crl_full_validity)}) must be at least "
                f"--crl-full-interval plus {d(margin(full))} ({d(full + margin(full))}): "
                f"each full CRL has to stay valid until its successor is out")
    if delta and settings.crl_delta_validity < delta + margin(delta):
        return (f"--crl-delta-validity ({d(settings.crl_delta_validity)}) must be at least "
                f"--crl-delta-interval plus {d(margin(delta))} ({d(delta + margin(delta))}): "
                f"each delta CRL has to stay valid until its successor is out")
    # A response is re-signed `refresh_after` after its thisUpdate, which lies `ocsp_backdate`
    # before signing; the sweep may add its interval. It must be refreshed well before it
    # expires, and not be due again the moment it is signed (a re-signing loop).
    refresh = settings.refresh_after
    if refresh <= settings.ocsp_backdate + PRESIGN_SWEEP_SECONDS:
        return (f"--ocsp-validity ({d(settings.ocsp_validity)}) is too short for "
                f"--ocsp-backdate ({d(settings.ocsp_backdate)}): responses would be due for "
                f"refresh as soon as they are signed")
    if settings.ocsp_validity - refresh < PRESIGN_SWEEP_SECONDS + 3600:
        return (f"--ocsp-validity ({d(settings.ocsp_validity)}) leaves too little time between "
                f"refresh and expiry")
    return None


def profile_problem(settings: Settings, profiles: set[str]) -> str | None:
    """Settings a standard forbids for the issuers' profiles, or None.

    CA/B Forum BR 4.9.7: CRLs for subscriber certificates are reissued at least every seven days
    (validity up to ten days is checked for every profile already).
    """
    if "br" in profiles and settings.crl_full_interval > 7 * 86400:
        return (f"--crl-full-interval ({format_duration(settings.crl_full_interval)}) is longer "
                f"than the 7d CA/B Forum BR 4.9.7 allows for issuers with the br profile")
    return None


def _replace(settings: Settings, **changes: Any) -> Settings:
    current = {f.name: getattr(settings, f.name) for f in fields(settings)}
    current.update(changes)
    return Settings(**current)


def _reason(exc: ValueError) -> str:
    text = str(exc)
    if text.startswith("invalid literal for int()"):
        return "not a whole number"
    return text


def default_text(spec: Spec) -> str:
    """The default of a setting as --help shows it."""
    if spec.default is not None:
        return spec.default
    value = getattr(Settings(), spec.name)
    if spec.parse is parse_duration:
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- keys in an HSM --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HsmEnvironment:
    """Where the PKCS#11 module is and the user PIN (INTERFACE "Keys in an HSM").

    Deliberately not part of `Settings`: settings are passed around and shown, the PIN must
    never be (repr is masked), and the signing worker processes read it from the environment
    they inherit instead of receiving it over a pipe.
    """

    module: str | None
    pin: str | None = field(repr=False)


def hsm_environment(environ: Mapping[str, str] | None = None) -> HsmEnvironment:
    """REVOC_PKCS11_MODULE, and the PIN from REVOC_PKCS11_PIN or the file REVOC_PKCS11_PIN_FILE.

    Raises SettingsError (one line, never the PIN) when the PIN file cannot be read.
    """
    env = os.environ if environ is None else environ
    module = env.get(ENV_PREFIX + "PKCS11_MODULE") or None
    pin = env.get(ENV_PREFIX + "PKCS11_PIN") or None
    pin_file = env.get(ENV_PREFIX + "PKCS11_PIN_FILE") or None
    if pin is None and pin_file is not None:
        try:
            pin = Path(pin_file).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise SettingsError(
                f"{ENV_PREFIX}PKCS11_PIN_FILE={pin_file}: cannot read it: {reason}") from None
    return HsmEnvironment(module=module, pin=pin)
