"""Benchmark: `revoc cert import --openssl-index` with N lines (default 1,000,000).

Writes a synthetic index.txt (10% revoked, reasons as OpenSSL writes them), registers a fresh
issuer in the database given by REVOC_DATABASE_URL and times the CLI import end to end.

    REVOC_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/revoc_bench python bench/import_index.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pki import make_ca

REASONS = ["keyCompromise,20260101000000Z", "superseded", "cessationOfOperation",
           "certificateHold,holdInstructionNone", "", "affiliationChanged"]


def serial_of(n: int) -> int:
    """The serial of line n: distinct for n < 2**32, all 120 bits long (same DER length)."""
    return (n * 2654435761 + 0x100000) & ((1 << 120) - 1) | (1 << 119)


def is_revoked(n: int) -> bool:
    """Line n is an R line (10% of them)."""
    return n % 10 == 0


def write_index(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for n in range(lines):
            serial = serial_of(n)
            if is_revoked(n):
                reason = REASONS[n % len(REASONS)]
                field = "260102030405Z" + ("," + reason if reason else "")
                out.write(f"R\t300101000000Z\t{field}\t{serial:X}\tunknown\t/CN=d{n}\n")
            else:
                out.write(f"V\t300101000000Z\t\t{serial:X}\tunknown\t/CN=d{n}\n")


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    revoc = str(Path(sys.executable).parent / "revoc")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cert, key = make_ca("Import Bench CA").write(base)
        name = f"importbench{os.getpid()}"
        subprocess.run([revoc, "db", "upgrade"], check=True)
        subprocess.run([revoc, "issuer", "add", "--name", name, "--cert", str(cert), "--key",
                        str(key)], check=True)
        index = base / "index.txt"
        write_index(index, lines)
        started = time.perf_counter()
        subprocess.run([revoc, "cert", "import", "--issuer", name, "--openssl-index",
                        str(index)], check=True)
        elapsed = time.perf_counter() - started
    print(f"imported {lines} lines in {elapsed:.1f} s ({lines / elapsed:,.0f} lines/s)")


if __name__ == "__main__":
    main()
