"""Reading /proc: a process tree's CPU time and RSS, and per-core busy time.

CPU time of a server is ``utime + stime`` of its process and of every live descendant
(granian's worker, nginx's worker), plus ``cutime + cstime`` (children that have exited and
been waited for), from ``/proc/PID/stat``; RSS is the sum of ``VmRSS`` over the same tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return raw[raw.rindex(")") + 2:].split()


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def tree(pid: int) -> list[int]:
    """The process and its live descendants."""
    children = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid: int, pids: list[int] | None = None) -> float:
    """utime+stime of the tree, plus cutime+cstime of the root (reaped children)."""
    total = 0
    for p in pids or tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        # After the "(comm)": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
        total += int(fields[11]) + int(fields[12])
        if p == pid:
            total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def rss_bytes(pid: int, pids: list[int] | None = None) -> int:
    total = 0
    for p in pids or tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


@dataclass
class CoreTimes:
    """Seconds per core: user+nice+system (process work), irq+softirq, steal, total."""

    work: dict[int, float]
    irq: dict[int, float]
    steal: dict[int, float]
    total: dict[int, float]


def core_times() -> CoreTimes:
    work, irq, steal, total = {}, {}, {}, {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            cpu = int(parts[0][3:])
            v = [int(x) for x in parts[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice
            work[cpu] = (v[0] + v[1] + v[2]) / CLK_TCK
            irq[cpu] = (v[5] + v[6]) / CLK_TCK
            steal[cpu] = v[7] / CLK_TCK if len(v) > 7 else 0.0
            total[cpu] = sum(v[:8]) / CLK_TCK
    return CoreTimes(work, irq, steal, total)


def core_delta(a: CoreTimes, b: CoreTimes) -> dict[str, dict[int, float]]:
    return {name: {cpu: getattr(b, name)[cpu] - getattr(a, name)[cpu]
                   for cpu in getattr(a, name)}
            for name in ("work", "irq", "steal", "total")}
