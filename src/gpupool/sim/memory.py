"""Run the simulator's process under glibc malloc with transparent huge pages.

    env = hugepage_env(os.environ)     # None: not applicable here (not glibc >= 2.35, or already set)
    if env is not None:
        os.execve(sys.executable, [sys.executable, "-m", "gpupool", *sys.argv[1:]], env)

Why: a simulated day at 100,000 providers is bound by memory lookups, not instructions.
Each routing draw reads one random provider's fields from some twenty lists and the objects
they point to, scattered over hundreds of MB of heap; with 4 KiB pages almost every one of
those reads misses the TLB as well as the cache (and a page walk in a VM costs twice).
Python's own allocator (pymalloc) takes 1 MiB arenas, too small for a 2 MiB huge page, so
THP ("madvise" mode on this machine) never applies to them. Under `PYTHONMALLOC=malloc` with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc madvises its heap for huge pages: same
objects, same decisions (the run's results are identical to the byte), ~18% less CPU for
the loop (bench/README.md "sim"). Both settings are read only at interpreter start, hence
the re-exec.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

# Set in the re-executed process: never re-exec twice, and the run can say it is on.
MARKER = "GPUPOOL_SIM_HUGEPAGES"
TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) on malloc's heap


def glibc_supports_hugetlb() -> bool:
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def hugepage_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-exec with, or None where it does not apply: already done, the user
    chose an allocator or glibc tunables of their own, or not Linux with glibc >= 2.35."""
    if MARKER in environ or "PYTHONMALLOC" in environ or "GLIBC_TUNABLES" in environ:
        return None
    if platform.system() != "Linux" or not glibc_supports_hugetlb():
        return None
    env = dict(environ)
    env.update({MARKER: "1", "PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": TUNABLE})
    return env


def active(environ: Mapping[str, str]) -> bool:
    return environ.get("PYTHONMALLOC") == "malloc" and TUNABLE in environ.get("GLIBC_TUNABLES", "")
