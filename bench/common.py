"""Shared helpers for the benchmarks under bench/: statistics, tables, JSON results, processes.

    from common import percentile, print_table, write_json, need_tools

Benchmarks run with the project's venv (`.venv/bin/python bench/<name>/run.py`) and
write `bench/results/<name>.json` (git-ignored). The machine is small and shared,
so benchmarks report medians over rounds and ratios against a baseline measured
in the same run rather than absolute numbers alone.
"""

from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float] | Iterable[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between ranks; nan if empty."""
    data = sorted(values)
    if not data:
        return float("nan")
    if len(data) == 1:
        return float(data[0])
    k = (len(data) - 1) * (p / 100.0)
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (k - lo))


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]  # drop nan
    return float(statistics.median(data)) if data else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# ---------------------------------------------------------------- tables and results


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table (also valid Markdown), numbers right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
               for i in range(len(headers))]

    def line(items: Sequence[str]) -> str:
        out = [(s.rjust(w) if numeric[i] else s.ljust(w)) for i, (s, w) in enumerate(zip(items, widths))]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if numeric[i] else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    lines = ([title] if title else []) + [line(headers), sep] + [line(r) for r in cells]
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    text = table(headers, rows, title)
    print(text, flush=True)
    return text


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_when_written": os.getloadavg(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "Architecture", "Hypervisor vendor", "CPU(s)"):
                info[key.strip()] = val.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_total_gib"] = round(int(mem[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def source_digest() -> str:
    """sha1 over src/**/*.py (paths and contents): which tree a result was measured on."""
    h = hashlib.sha1()
    for f in sorted((REPO_ROOT / "src").rglob("*.py")):
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write bench/results/<name>.json (with machine info and the source digest); return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {"benchmark": name, "machine": machine_info(), "src_digest": source_digest(), **data}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


# ---------------------------------------------------------------- environment checks


class Missing(SystemExit):
    pass


def need_tools(*names: str, install: str = "") -> None:
    """Exit with a clear message naming every missing executable and how to install it."""
    missing = [n for n in names if shutil.which(n) is None and not Path(f"/usr/sbin/{n}").exists()]
    if missing:
        how = install or f"apt-get install {' '.join(missing)}"
        raise Missing(f"error: this benchmark needs {', '.join(missing)} on PATH, which "
                      f"{'is' if len(missing) == 1 else 'are'} missing.\n"
                      f"  install with: {how}   (Debian/Ubuntu, as root or with sudo, after apt-get update)")


def tool_path(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def need_gpupool() -> None:
    try:
        import gpupool  # noqa: F401
    except ImportError:
        raise Missing("error: gpupool is not importable; run with the project venv:\n"
                      "  make venv && .venv/bin/python bench/...") from None


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file soft limit (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- processes and ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen[Any] | None = None,
              what: str = "server", log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} at start\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on port {port} after {timeout}s")


class Background:
    """A child process in its own session (so a Ctrl-C reaches only us), stopped on exit."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# ---------------------------------------------------------------- /proc readings


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, prefix: str) -> float:
    """CPU seconds (exact, from schedstat) of the process's threads whose OS name starts
    with `prefix`: e.g. a backend's model thread ("model-"), apart from the rest."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith(prefix):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total / 1e9


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User+system CPU seconds of a process and (by default) its live descendants."""
    pids = [pid]
    if children:
        pids += _descendants(pid)
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out.append(int(c))
        out += _descendants(int(c))
    return out


def system_cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies from /proc/stat, for a whole-machine utilisation figure."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return float(sum(vals) - idle), float(sum(vals))


# ---------------------------------------------------------------- py-spy profiles


def pyspy_path() -> str | None:
    """py-spy on PATH, else the one bench/overhead/setup.sh puts in bench/.venv-litellm."""
    found = shutil.which("py-spy")
    if found:
        return found
    local = BENCH_DIR / ".venv-litellm" / "bin" / "py-spy"
    return str(local) if local.exists() else None


def start_pyspy(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[str] | None:
    """Sample a process (all threads, separately) without pausing it; collapsed stacks to `out`."""
    exe = pyspy_path()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
         "--format", "raw", "--threads", "--nonblocking", "--output", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Frames under every sample (CLI, runners, loop trampolines): they say nothing about where time goes.
_BOILERPLATE = ("typer/", "click/", "runpy", "<frozen runpy>", "gpupool/cli.py", "gpupool/__main__.py",
                "asyncio/runners.py", "uvloop/__init__.py", "asyncio/events.py", "threading.py")
_LOOP = "(event loop itself: uvloop C code, epoll, socket I/O)"


def _where(frame: str) -> tuple[str, str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "", ""
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/src/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return m.group("func"), file, m.group("line") or ""


def _area(file: str) -> str:
    if not file:
        return "(native)"
    top = file.split("/")[0].removesuffix(".py")
    if top == "gpupool":
        return "/".join(file.split("/")[:2]).removesuffix(".py")
    return top


def summarize_profile(path: Path, seconds: float = 0.0, rate: int = 250, top: int = 15) -> dict[str, Any]:
    """Self and inclusive time per function, self time per package, for py-spy `--format raw --threads`.

    Percentages are of the main thread's samples (the event loop: where request latency
    is made); `threads` gives every thread's samples and, with `seconds` and `rate`,
    how busy it was (py-spy leaves out idle samples).
    """
    self_t: collections.Counter[str] = collections.Counter()
    self_lines: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    area_self: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "MainThread"
        if frames and frames[0].startswith("thread "):
            thread = frames[0].split(": ", 1)[-1].split(" (")[0]
            frames = frames[1:]
        threads[thread] += n
        if thread != "MainThread":
            continue
        frames = [f for f in frames if f and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        parsed = [_where(f) for f in frames]
        func, file, lineno = parsed[-1]
        if file.startswith(("asyncio/runners.py", "uvloop/__init__.py")):
            leaf, area = _LOOP, "(event loop)"
        else:
            leaf, area = (f"{func} ({file})" if file else func), _area(file)
            self_lines[f"{func} ({file}:{lineno})"] += n
        self_t[leaf] += n
        area_self[area] += n
        for name in {f"{fn} ({fl})" for fn, fl, _ in parsed if fl and not fl.startswith(_BOILERPLATE)}:
            incl[name] += n

    def pct(c: collections.Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(100 * v / total, 1)] for name, v in c.most_common(k)] if total else []

    possible = seconds * rate
    return {
        "main_thread_samples": total,
        "threads": {t: {"samples": v, "busy": round(v / possible, 3) if possible else None}
                    for t, v in threads.most_common(8)},
        "by_area_self_pct": pct(area_self, 14),
        "self_pct": pct(self_t, top),
        "self_lines_pct": pct(self_lines, 10),
        "inclusive_pct": pct(incl, 30),
    }


def profile_text(name: str, p: dict[str, Any], inclusive_rows: int = 22) -> str:
    busy = p["threads"].get("MainThread", {}).get("busy")
    head = f"{name}: {p['main_thread_samples']} main-thread samples" + (
        f", main thread {busy * 100:.0f}% busy" if busy is not None else "")
    others = {t: v for t, v in p["threads"].items() if t != "MainThread"}
    if others:
        head += "; other threads: " + ", ".join(
            f"{t} {v['samples']}" for t, v in list(others.items())[:4])
    return "\n".join([
        head,
        table(["package (self time, main thread)", "%"], p["by_area_self_pct"]),
        table(["function (self)", "%"], p["self_pct"][:12]),
        table(["hottest lines (self)", "%"], p["self_lines_pct"][:6]),
        table(["function (inclusive)", "%"], p["inclusive_pct"][:inclusive_rows]),
    ])


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the socket listening on `port` (-1 if none)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local_address "0100007F:1F90", state 0A = LISTEN, tx_queue:rx_queue; rx = accept backlog.
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return int(f[4].split(":")[1], 16)
    return -1
