"""CPU accounting from /proc: CPU seconds of a process tree, per-core busy/steal time.

Owns: reading /proc/<pid>/stat, /proc/<pid>/task and /proc/stat, and the arithmetic on those snapshots.
Invariants: the parsing functions are pure (text in, numbers out) so they are unit-tested without /proc;
a process that exits between two snapshots is dropped, one that appears counts in full.
Never: signals, kills or re-pins anything (that is servers.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_pid_stat(text: str) -> tuple[int, int]:
    """`/proc/<pid>/stat` -> (ppid, utime + stime in clock ticks).

    The command name (field 2) is in parentheses and may itself contain spaces and ')', so the fields are
    counted from the *last* ')' on (proc(5): state is field 3, ppid 4, utime 14, stime 15).
    """
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def parse_proc_stat(text: str) -> dict[int, tuple[int, int, int]]:
    """`/proc/stat` -> {cpu: (total ticks, idle + iowait ticks, steal ticks)} for every cpuN line."""
    out: dict[int, tuple[int, int, int]] = {}
    for line in text.splitlines():
        if line.startswith("cpu") and len(line) > 3 and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]] + [0] * max(0, 8 - len(vals))
            # user nice system idle iowait irq softirq steal (guest is already inside user)
            out[int(name[3:])] = (sum(v[:8]), v[3] + v[4], v[7])
    return out


@dataclass(frozen=True)
class CoreUse:
    busy: float  # fraction of the core's time not idle (0..1)
    steal: float  # fraction stolen by the hypervisor


def core_use(
    before: dict[int, tuple[int, int, int]], after: dict[int, tuple[int, int, int]]
) -> dict[int, CoreUse]:
    """Per-core busy and steal fractions between two parse_proc_stat snapshots."""
    out = {}
    for cpu, (t0, i0, s0) in before.items():
        if cpu not in after:
            continue
        t1, i1, s1 = after[cpu]
        total = (t1 - t0) or 1
        out[cpu] = CoreUse(busy=1 - (i1 - i0) / total, steal=(s1 - s0) / total)
    return out


def children_map(stats: dict[int, str]) -> dict[int, list[int]]:
    """{pid: stat text} -> {ppid: [child pids]} (unparsable entries are skipped)."""
    kids: dict[int, list[int]] = {}
    for pid, text in stats.items():
        try:
            ppid, _ = parse_pid_stat(text)
        except (ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(pid)
    return kids


def descendants(root: int, kids: dict[int, list[int]]) -> list[int]:
    """root and all its descendants, root first."""
    out, todo, seen = [], [root], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def parse_sched_runtime(text: str) -> float | None:
    """`/proc/<pid>/task/<tid>/sched` -> CPU seconds the task has run (se.sum_exec_runtime, printed in ms with
    ns precision), or None when the field is absent. Finer than the 10 ms ticks of /proc/<pid>/stat, which
    matter for short runs such as the storm."""
    for line in text.splitlines():
        if line.startswith("se.sum_exec_runtime"):
            try:
                return float(line.split(":", 1)[1]) / 1000
            except (IndexError, ValueError):
                return None
    return None


def runtime_delta_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two {tid: seconds} snapshots (same rules as tree_delta_seconds)."""
    return sum(t - before.get(p, 0.0) for p, t in after.items() if t >= before.get(p, 0.0))


def tree_delta_seconds(before: dict[int, int], after: dict[int, int], clk_tck: int = CLK_TCK) -> float:
    """CPU seconds used between two {pid: ticks} snapshots. Exited processes are dropped (their last
    interval is lost, see README caveats); processes new in `after` count in full."""
    return sum(t - before.get(p, 0) for p, t in after.items() if t >= before.get(p, 0)) / clk_tck


# ---------------------------------------------------------------- reading the live /proc
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def all_stats() -> dict[int, str]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            text = _read(f"/proc/{d}/stat")
            if text:
                out[int(d)] = text
    return out


def process_tree(root: int) -> list[int]:
    """PIDs of root and every descendant, from the live /proc."""
    return descendants(root, children_map(all_stats()))


def tree_ticks(roots: list[int]) -> dict[int, int]:
    """{pid: utime+stime ticks} for the trees under every root (one /proc scan)."""
    stats = all_stats()
    kids = children_map(stats)
    out = {}
    for root in roots:
        for p in descendants(root, kids):
            if p in stats:
                try:
                    out[p] = parse_pid_stat(stats[p])[1]
                except (ValueError, IndexError):
                    pass
    return out


def tree_runtime(roots: list[int]) -> dict[int, float] | None:
    """{tid: CPU seconds} for every thread of the trees under roots, from the scheduler's own accounting;
    None when /proc/<pid>/task/<tid>/sched is not available on this kernel."""
    kids = children_map(all_stats())
    out: dict[int, float] = {}
    for root in roots:
        for p in descendants(root, kids):
            try:
                tids = os.listdir(f"/proc/{p}/task")
            except OSError:
                continue
            for t in tids:
                text = _read(f"/proc/{p}/task/{t}/sched")
                if text is None:
                    continue
                v = parse_sched_runtime(text)
                if v is None:
                    return None
                out[int(t)] = v
    return out or None


def cpu_snapshot() -> dict[int, tuple[int, int, int]]:
    return parse_proc_stat(_read("/proc/stat") or "")


def tree_affinity(root: int) -> tuple[int, set[int]]:
    """(number of tasks, union of their allowed CPUs) over every thread of the tree."""
    tasks, cpus = 0, set()
    for p in process_tree(root):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                cpus |= set(os.sched_getaffinity(int(t)))
                tasks += 1
            except OSError:
                pass
    return tasks, cpus
