"""``prunekit verify``: run the checkable claims (methods.md §11) and the optimality-gap reports.

::

    prunekit verify                  # every claim, full trials, then every report
    prunekit verify --quick          # few trials per claim (well under a minute)
    prunekit verify --claims C1,C12  # a subset (reports are skipped when a subset is chosen)
    prunekit verify --json           # JSON list: claim records, then report records (see runner.to_records)

Exit status 0 when every claim (and report) passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    """Add the ``verify`` subcommand to the ``prunekit`` parser."""
    p = subparsers.add_parser("verify", help="check the claims of methods.md on random toy layers",
                              description=__doc__.replace("``", "").replace("::\n", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few trials per claim (fast)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--claims", default="", help="comma-separated claim ids, e.g. C1,C12 (default: all)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random instances")
    p.add_argument("--no-reports", action="store_true", help="skip the quantitative reports")
    p.set_defaults(func=run)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}" if isinstance(x, float) else str(x)


def _table(records: list[dict]) -> str:
    lines = [f"{'claim':<6} {'statement':<60} {'status':<6} {'worst error':>11} {'tolerance':>9}"]
    lines.append("-" * len(lines[0]))
    for r in records:
        if "claim" not in r:
            continue
        st = r["statement"] if len(r["statement"]) <= 60 else r["statement"][:57] + "..."
        lines.append(f"{r['claim']:<6} {st:<60} {r['status']:<6} {_fmt(r['worst_error']):>11} "
                     f"{_fmt(r['tolerance']):>9}")
        if r["status"] != "pass" and r.get("message"):
            lines.append(f"       -> {r['message']}")
    for r in records:
        if "report" not in r:
            continue
        lines.append("")
        lines.append(f"report {r['report']} [{r['status']}]: {r['description']}")
        body = r.get("result", {}).get("summary", r.get("result")) if r["status"] == "pass" else r.get("message")
        if isinstance(body, dict):
            lines.extend(f"    {k}: {_fmt(v)}" for k, v in body.items())
        elif body is not None:
            lines.append(f"    {body}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the selected claims and reports; print a table or JSON; return the exit status."""
    from ..verification.runner import run_all, run_reports, to_records

    ids = [c.strip() for c in args.claims.split(",") if c.strip()]
    try:
        results = run_all(quick=args.quick, claims=ids, seed=args.seed)
    except KeyError as exc:
        print(f"prunekit: error: {exc.args[0]}. Fix: pass claim ids from that list, e.g. --claims C1,C12.",
              file=sys.stderr)
        return 2
    reports = [] if (ids or args.no_reports) else run_reports(quick=args.quick, seed=args.seed)
    records = to_records(results, reports)
    if args.json:
        print(json.dumps(records, indent=2, allow_nan=False))
    else:
        print(_table(records))
        failed = sum(r["status"] != "pass" for r in records)
        print(f"\n{len(results)} claim(s), {len(reports)} report(s), {failed} failure(s).")
    return 0 if all(r["status"] == "pass" for r in records) else 1
