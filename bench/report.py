"""Turning runs into the markdown table, the PNG chart and the README section.

Owns: summarising runs (medians over rounds, median per-round ratios, noise warnings), rendering.
Invariants: summarise() and render_markdown() are pure (runs + meta in, text out) and unit-tested; ratios are
medians of per-round ratios, so a system and its reference are compared on runs seconds apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import stats

ORDER = ["edgecore", "nginx", "varnish", "ceiling"]
LABELS = {
    "edgecore": "edgecore",
    "nginx": "nginx proxy_cache",
    "varnish": "Varnish",
    "ceiling": "Python ceiling",
}
README_START = "<!-- latest-results:start -->"
README_END = "<!-- latest-results:end -->"


@dataclass
class Row:
    system: str
    scenario: str
    rounds: int
    rps: float | None
    rps_spread: float | None
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    cpu_us: float | None
    upstream: float | None  # upstream requests per run (median)
    upstream_per_req: float | None
    rps_vs_nginx: float | None = None
    cpu_vs_nginx: float | None = None
    rps_vs_ceiling: float | None = None
    cpu_vs_ceiling: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float | None:
        return None if self.upstream_per_req is None else max(0.0, 1 - self.upstream_per_req)


def _by_round(runs: Iterable[dict], key: str) -> dict[int, float | None]:
    return {r["round"]: r.get(key) for r in runs}


def summarise(runs: list[dict], checks: dict[str, str] | None = None) -> dict[str, list[Row]]:
    """{scenario: [Row per system, in ORDER]} from the raw per-run records."""
    checks = checks or {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["system"]), []).append(r)
    out: dict[str, list[Row]] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        systems = sorted({s for (sc, s) in groups if sc == scenario}, key=lambda s: (ORDER + [s]).index(s))
        rows = []
        for s in systems:
            rs = groups[(scenario, s)]
            row = Row(
                system=s,
                scenario=scenario,
                rounds=len(rs),
                rps=stats.median(r["rps"] for r in rs),
                rps_spread=stats.spread([r["rps"] for r in rs]),
                p50_ms=stats.median(r["p50_ms"] for r in rs),
                p99_ms=stats.median(r["p99_ms"] for r in rs),
                p999_ms=stats.median(r["p999_ms"] for r in rs),
                max_ms=stats.median(r.get("max_ms") for r in rs),
                cpu_us=stats.median(r["cpu_us_per_req"] for r in rs),
                upstream=stats.median(r["upstream"] for r in rs),
                upstream_per_req=stats.median(r["upstream_per_req"] for r in rs),
            )
            for ref, attr in (("nginx", "vs_nginx"), ("ceiling", "vs_ceiling")):
                if (scenario, ref) in groups and ref != s:
                    refs = groups[(scenario, ref)]
                    setattr(
                        row, "rps_" + attr, stats.median_ratio(_by_round(rs, "rps"), _by_round(refs, "rps"))
                    )
                    setattr(
                        row,
                        "cpu_" + attr,
                        stats.median_ratio(
                            _by_round(rs, "cpu_us_per_req"), _by_round(refs, "cpu_us_per_req")
                        ),
                    )
                elif ref == s:
                    setattr(row, "rps_" + attr, 1.0)
                    setattr(row, "cpu_" + attr, 1.0)
            check = checks.get(f"{s}|{scenario}")
            if check and not check.startswith("OK"):
                row.notes.append(check)
            kind_storm = scenario == "storm"
            row.notes += stats.noise_warnings(
                [None if kind_storm else r["rps"] for r in rs], [r.get("other_cpu") for r in rs]
            )
            errs: dict[str, int] = {}
            for r in rs:
                for k, v in (r.get("errors") or {}).items():
                    errs[k] = errs.get(k, 0) + v
            if errs:
                row.notes.append("errors " + ", ".join(f"{k} {v:,}" for k, v in sorted(errs.items())))
            if r.get("wrk_cpu") and stats.median(x.get("wrk_cpu") for x in rs) > 0.9 and s != "edgecore":
                row.notes.append("wrk near its core's limit: req/s is a lower bound, compare CPU/req")
            rows.append(row)
        out[scenario] = rows
    return out


def _ordered(rows: dict[str, list[Row]], meta: dict) -> dict[str, list[Row]]:
    """Scenarios in the order the run listed them (not the shuffled order of its first round)."""
    order = list(meta.get("scenarios", {})) + list(rows)
    return {k: rows[k] for k in sorted(rows, key=order.index)}


def _f(x: float | None, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def render_markdown(runs: list[dict], meta: dict, checks: dict[str, str] | None = None) -> str:
    rows = _ordered(summarise(runs, checks), meta)
    scen = meta.get("scenarios", {})
    L = [f"# edgecore bench: {meta.get('date', '?')}, commit {meta.get('commit', '?')}", ""]
    L.append(f"- machine: {meta.get('machine', '?')}")
    L.append(f"- software: {meta.get('versions', '?')}")
    L.append(f"- method: {meta.get('method', '?')}")
    L.append(f"- command: `{meta.get('command', 'python -m bench')}`")
    if meta.get("chart"):
        L.append(f"- chart: [{meta['chart']}]({meta['chart']})")
    for note in meta.get("notes", []):
        L.append(f"- note: {note}")
    for key, why in meta.get("skipped", {}).items():
        L.append(f"- **{LABELS.get(key, key)} skipped**: {why.splitlines()[0]}")
    noisy = [
        r for rs in rows.values() for r in rs if any(n.startswith(("noisy", "disturbed")) for n in r.notes)
    ]
    if noisy:
        L.append(
            f"- **warning: the machine was noisy** in {len(noisy)} row(s) (see notes): the rounds disagree "
            f"by more than {stats.NOISY_SPREAD:.0%}, or other processes used the server's cores. "
            "Trust ratios from the same run over absolute numbers; rerun before believing a small difference."
        )
    L.append("")
    L.append(
        "`CPU µs/req` is the CPU time (from /proc) of all the server's processes and threads divided by the "
        "requests it answered: the per-core cost, valid even when the load generator is the limit. Ratios "
        "are medians of per-round ratios; `÷ nginx` below 1 means cheaper per request / slower than nginx. "
        "`upstream/req` is the origin's own request count over client requests."
    )
    for name, rs in rows.items():
        info = scen.get(name, {})
        L += ["", f"## {info.get('title', name)}", "", info.get("what", ""), ""]
        if name == "storm":
            L.append(
                "| system | clients | upstream requests | upstream/req | p50 ms | p99 ms | p99.9 ms | max ms "
                "| CPU µs/req | CPU/req ÷ nginx | notes |"
            )
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for r in rs:
                clients = next((x["requests"] for x in runs if x["scenario"] == name), 0)
                L.append(
                    f"| {LABELS.get(r.system, r.system)} | {clients} | {_f(r.upstream, '.0f')} "
                    f"| {_f(r.upstream_per_req, '.3f')} | {_f(r.p50_ms, '.1f')} | {_f(r.p99_ms, '.1f')} "
                    f"| {_f(r.p999_ms, '.1f')} | {_f(r.max_ms, '.1f')} | {_f(r.cpu_us, '.1f')} "
                    f"| {_f(r.cpu_vs_nginx, '.2f')} | {'; '.join(r.notes)} |"
                )
            continue
        hr = name == "zipf"
        L.append(
            "| system | req/s | spread | p50 ms | p99 ms | p99.9 ms | CPU µs/req | upstream/req "
            + ("| hit ratio " if hr else "")
            + "| req/s ÷ nginx | CPU/req ÷ nginx | req/s ÷ ceiling | CPU/req ÷ ceiling | notes |"
        )
        L.append(
            "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if hr else "") + "---:|---:|---:|---:|---|"
        )
        for r in rs:
            is_ceiling = r.system == "ceiling"
            L.append(
                f"| {LABELS.get(r.system, r.system)} | {_f(r.rps, ',.0f')} | {_f(r.rps_spread, '.0%')} "
                f"| {_f(r.p50_ms, '.2f')} | {_f(r.p99_ms, '.2f')} | {_f(r.p999_ms, '.2f')} "
                f"| {_f(r.cpu_us, '.1f')} "
                f"| {'-' if is_ceiling else _f(r.upstream_per_req, '.3f')} "
                + (f"| {'-' if is_ceiling else _f(r.hit_ratio, '.1%')} " if hr else "")
                + f"| {_f(r.rps_vs_nginx, '.2f')} | {_f(r.cpu_vs_nginx, '.2f')} "
                f"| {_f(r.rps_vs_ceiling, '.2f')} | {_f(r.cpu_vs_ceiling, '.2f')} | {'; '.join(r.notes)} |"
            )
    if meta.get("systems"):
        L += ["", "## Systems", ""]
        L += [f"- {LABELS.get(k, k)}: {v}" for k, v in meta["systems"].items()]
    if checks:
        L += ["", "## Verification before the runs (2nd GET: exact bytes, a hit for caches)", ""]
        L += [f"- {k.replace('|', ' / ')}: {v}" for k, v in sorted(checks.items())]
    if meta.get("flamegraph"):
        L += [
            "",
            f"Flame graph of {meta.get('flamegraph_of', 'the server')} under the 1 KiB hit load: "
            f"[{meta['flamegraph']}]({meta['flamegraph']})",
        ]
    L += ["", "## Caveats", ""]
    L += [f"- {c}" for c in meta.get("caveats", [])]
    return "\n".join(L).rstrip() + "\n"


def render_chart(runs: list[dict], meta: dict, path: Path) -> None:
    """One row per scenario: CPU µs per request per system (left), latency p50/p99/p99.9 (right, log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ordered(summarise(runs), meta)
    n = len(rows)
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.6 * n + 0.8), squeeze=False)
    colors = {"edgecore": "#d1495b", "nginx": "#00798c", "varnish": "#edae49", "ceiling": "#66a182"}
    for i, (name, rs) in enumerate(rows.items()):
        title = meta.get("scenarios", {}).get(name, {}).get("title", name)
        labels = [LABELS.get(r.system, r.system) for r in rs]
        ax = axes[i][0]
        vals = [r.cpu_us or 0 for r in rs]
        ax.barh(labels, vals, color=[colors.get(r.system, "grey") for r in rs])
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title}: CPU µs per request (lower is better)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax = axes[i][1]
        width = 0.27
        for j, (attr, lab) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
            xs = [k + (j - 1) * width for k in range(len(rs))]
            ax.bar(
                xs,
                [getattr(r, attr) or 0 for r in rs],
                width,
                label=lab,
                alpha=0.4 + 0.3 * j,
                color=[colors.get(r.system, "grey") for r in rs],
                edgecolor="black",
                linewidth=0.3,
            )
        ax.set_xticks(range(len(rs)), labels, fontsize=8)
        if i == 0:
            from matplotlib.patches import Patch

            ax.legend(
                handles=[
                    Patch(facecolor="grey", alpha=0.4 + 0.3 * j, label=lab)
                    for j, lab in enumerate(("p50", "p99", "p99.9"))
                ],
                fontsize=7,
                loc="upper left",
            )
        ax.set_yscale("log")
        ax.set_title(f"{title}: latency ms (bars: p50, p99, p99.9)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(
        f"edgecore bench {meta.get('date', '')} {meta.get('commit', '')}: {meta.get('machine_short', '')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def update_readme(readme: Path, md_path: Path, chart_path: Path | None, md_text: str, meta: dict) -> None:
    """Replace the section between the markers with the latest run's header, tables and chart."""
    body = md_text.split("\n", 1)[1] if md_text.startswith("# ") else md_text
    body = re.sub(r"^## ", "#### ", body, flags=re.MULTILINE)
    rel = md_path.relative_to(readme.parent)
    # links in the run's markdown are relative to its folder; make them relative to the README
    body = re.sub(r"\]\(([^)/:]+)\)", lambda m: f"]({rel.parent.as_posix()}/{m.group(1)})", body)
    block = [
        README_START,
        f"### Latest run: {meta.get('date')}, commit {meta.get('commit')} ([{rel}]({rel}))",
        "",
    ]
    if chart_path is not None:
        crel = chart_path.relative_to(readme.parent)
        block += [f"![CPU per request and latency per system]({crel})", ""]
    block += [body.strip(), README_END]
    text = readme.read_text() if readme.exists() else f"# bench\n\n{README_START}\n{README_END}\n"
    if README_START not in text:
        text = text.rstrip() + f"\n\n{README_START}\n{README_END}\n"
    pre, rest = text.split(README_START, 1)
    post = rest.split(README_END, 1)[1] if README_END in rest else "\n"
    readme.write_text(pre + "\n".join(block) + post)
