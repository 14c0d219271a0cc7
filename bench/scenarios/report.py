"""A run's summary (summary.json) and what is printed: per run, per set of runs, and the
Markdown table bench/README.md carries.
"""

from __future__ import annotations

import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from bench.scenarios.verdicts import Check, Evidence, Settings
from bench.timeline import Timeline, failure_window, phases, reasons, recovery

if TYPE_CHECKING:
    from bench.scenarios.catalog import Scenario
    from bench.scenarios.faults import Run
    from bench.scenarios.runner import Options
    from bench.scenarios.setup import Monitor

MAX_TRANSITIONS_SHOWN = 12

console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)


def summarise(
    scenario: Scenario,
    run: Run,
    timeline: Timeline,
    monitor: Monitor,
    settings: Settings,
    options: Options,
    results: Path,
) -> dict[str, Any]:
    window = run.window or (run.t0 + run.duration / 3, run.t0 + 2 * run.duration / 3)
    cut = phases(timeline, *window, start=run.t0, end=run.t0 + run.duration)
    node = run.focus
    keys = {(stub.pool or "default", stub.id) for stub in node.members} if node else set()
    focus = node.ids if node else []
    watched = [t for t in monitor.transitions if (t.pool, t.server) in keys]
    evidence = Evidence(
        timeline=timeline,
        phases={p.name: p for p in cut},
        window=window,
        focus=focus,
        transitions=watched,
        notes=run.notes,
        nodes=len(run.setup.nodes),
        users=options.users,
        settings=settings,
    )
    if "cut_short" in run.notes:  # the fault schedule did not finish: nothing to judge
        checks = [Check("the load ran for the whole scenario", False, run.notes["cut_short"])]
    elif not cut:
        checks = [Check("requests served", False, "0")]
    else:
        checks = scenario.judge(evidence)
    transitions = [
        {
            "at": round(t.at - run.t0, 3),
            "server": f"{t.pool}/{t.server}",
            "state": t.state,
            "reason": t.reason,
        }
        for t in monitor.transitions
        if (not keys or (t.pool, t.server) in keys) and t.at >= run.t0
    ]
    idempotent = len(evidence.failures(idempotent=True))
    per_second = [b.requests for b in timeline.full_buckets()]
    return {
        "scenario": scenario.name,
        "shows": scenario.shows,
        "criteria": scenario.criteria,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "own balancer" if run.setup.own else f"--host {run.setup.host}",
        "protected": options.protected,
        "load": options.load_name,
        "duration_s": options.duration,
        "users": options.users,
        "rate_per_user": options.rate,
        "results": str(results),
        "requests": evidence.requests,
        "rps_median": statistics.median(per_second) if per_second else None,
        "failures": len(timeline.failures),
        "failures_idempotent": idempotent,
        "failures_other": len(timeline.failures) - idempotent,
        "failure_rate": len(timeline.failures) / evidence.requests if evidence.requests else 0.0,
        "failure_window_s": round(failure_window(timeline.failures), 3),
        "recovery_s": round(recovery(timeline.failures, window[0]), 3),
        "failure_reasons": reasons(timeline.failures),
        "window": [round(window[0] - run.t0, 3), round(window[1] - run.t0, 3)],
        "focus": {"node": node.name, "stubs": focus} if node else None,
        "phases": [
            p.to_dict()
            | {
                "start": round(p.start - run.t0, 3),
                "end": round(p.end - run.t0, 3),
                "focus_share": p.share(focus) if focus else None,
            }
            for p in cut
        ],
        "events": run.events,
        "transitions": transitions,
        "notes": run.notes,
        "checks": [{"name": c.name, "ok": c.ok, "value": c.value} for c in checks],
        "verdict": "PASS" if checks and all(c.ok for c in checks) else "FAIL",
        "files": sorted(path.name for path in results.iterdir()),
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_summary(summary: dict[str, Any]) -> None:
    control = "" if summary["protected"] else ", CONTROL: protection off"
    console.print(
        f"[bold]{summary['scenario']}[/] ({summary['duration_s']} s, {summary['users']} users "
        f"x {summary['rate_per_user']:g} req/s, {summary['mode']}{control}): "
        f"{summary['requests']:,} requests, {summary['failures']} failures "
        f"({summary['failures_idempotent']} idempotent, {summary['failures_other']} POSTs), "
        f"failure window {summary['failure_window_s']:.2f} s, "
        f"recovery {summary['recovery_s']:.2f} s"
    )
    focus = summary["focus"]
    table = Table(title_justify="left")
    for heading in ("phase", "seconds", "requests", "failures", "req/s", "p50 ms", "p99 ms"):
        table.add_column(heading, justify="left" if heading == "phase" else "right")
    if focus:
        table.add_column(f"{focus['node']} share", justify="right")
    for p in summary["phases"]:
        row = [
            p["name"],
            f"{p['start']:.1f}-{p['end']:.1f}",
            f"{p['requests']:,}",
            str(p["failures"]),
            fmt(p["rps"], ".0f"),
            fmt(p["p50_ms"]),
            fmt(p["p99_ms"]),
        ]
        if focus:
            row.append(
                fmt(None if p["focus_share"] is None else p["focus_share"] * 100, ".1f") + "%"
            )
        table.add_row(*row)
    console.print(table)
    for reason, count in list(summary["failure_reasons"].items())[:5]:
        console.print(f"  failed: {count} x {reason}")
    shown = summary["transitions"][:MAX_TRANSITIONS_SHOWN]
    for t in shown:
        console.print(f"  balancer +{t['at']:.2f}s {t['server']} -> {t['state']} ({t['reason']})")
    if len(summary["transitions"]) > len(shown):
        more = len(summary["transitions"]) - len(shown)
        console.print(f"  balancer: {more} more state changes in summary.json")
    for check in summary["checks"]:
        mark = "[green]PASS[/]" if check["ok"] else "[red]FAIL[/]"
        console.print(f"  {mark} {check['name']}: {check['value']}")
    colour = "green" if summary["verdict"] == "PASS" else "red"
    console.print(f"  verdict: [bold {colour}]{summary['verdict']}[/]  ({summary['results']})")


def overview_table(summaries: list[dict[str, Any]]) -> Table:
    table = Table(
        title="scenarios (req/s and p99 before / during / after the fault)", title_justify="left"
    )
    for heading in (
        "scenario",
        "requests",
        "failures",
        "window s",
        "recovery s",
        "req/s",
        "p99 ms",
        "verdict",
    ):
        table.add_column(heading, justify="left" if heading in ("scenario", "verdict") else "right")
    for s in summaries:
        by_name = {p["name"]: p for p in s["phases"]}
        names = ("before", "during", "after")
        table.add_row(
            s["scenario"],
            f"{s['requests']:,}",
            f"{s['failures']} ({s['failure_rate']:.2%})",
            f"{s['failure_window_s']:.2f}",
            f"{s['recovery_s']:.2f}",
            " / ".join(fmt(by_name.get(n, {}).get("rps"), ".0f") for n in names),
            " / ".join(fmt(by_name.get(n, {}).get("p99_ms")) for n in names),
            s["verdict"],
        )
    return table


def list_scenarios(scenarios: dict[str, Scenario]) -> None:
    table = Table(title="scenarios", title_justify="left")
    table.add_column("name")
    table.add_column("what happens")
    table.add_column("PASS when")
    for scenario in scenarios.values():
        table.add_row(scenario.name, scenario.shows, scenario.criteria)
    console.print(table)


def matrix_markdown(summaries: list[dict[str, Any]]) -> str:
    """The table bench/README.md carries: each scenario at each load, protected and as a
    control run (protection off). It discriminates when the first passes and the second
    fails: a verdict the unprotected balancer also passes proves nothing."""
    cells: dict[tuple[str, str], dict[bool, dict[str, Any]]] = {}
    for summary in summaries:
        cells.setdefault((summary["scenario"], summary["load"]), {})[summary["protected"]] = summary
    lines = [
        "| scenario | load | req/s | protected: verdict (failures GET/POST, p99 during) "
        "| control: verdict (failures GET/POST, p99 during) | discriminates |",
        "|---|---|---|---|---|---|",
    ]

    def cell(summary: dict[str, Any] | None) -> str:
        if summary is None:
            return "not run"
        during = next((p for p in summary["phases"] if p["name"] == "during"), {})
        failed = [c["name"] for c in summary["checks"] if not c["ok"]]
        why = f"; failed: {'; '.join(failed)}" if failed else ""
        return (
            f"{summary['verdict']} ({summary['failures_idempotent']}/"
            f"{summary['failures_other']}, {fmt(during.get('p99_ms'))} ms{why})"
        )

    for (name, load), runs in cells.items():
        protected, control = runs.get(True), runs.get(False)
        rps = fmt((protected or control or {}).get("rps_median"), ".0f")
        if protected is None or control is None:
            discriminates = "-"
        else:
            discriminates = (
                "yes" if protected["verdict"] == "PASS" and control["verdict"] == "FAIL" else "no"
            )
        lines.append(
            f"| {name} | {load} | {rps} | {cell(protected)} | {cell(control)} | {discriminates} |"
        )
    return "\n".join(lines) + "\n"
