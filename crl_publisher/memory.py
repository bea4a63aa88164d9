"""Large buffers go back to the operating system when freed (glibc only; a no-op elsewhere).

glibc serves a request of at least M_MMAP_THRESHOLD bytes (128 KiB at start) with a mapping of
its own, unmapped on free; but each time such a block is freed the threshold rises to its size
(up to 32 MiB), so later buffers of a few MiB come from the heap, where freed space is reused
for smaller objects and is seldom returned. A publishing round handles tens of MiB at a time (a
CRL's entries, its DER, COPY chunks, a file repaired from the database), and that rise cost the
`revoc publish --once` of a 49 MB CRL 15-50 MiB of peak RSS when a repair preceded the round
(bench/RESULTS.md, issue 13 point 9). Setting the threshold explicitly turns the adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_MMAP_THRESHOLD = -3  # <malloc.h>
THRESHOLD = 128 * 1024  # glibc's default, kept fixed


def keep_large_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold at THRESHOLD; whether it was set."""
    if platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
