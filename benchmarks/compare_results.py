"""Before/after: is a change that moves numbers at float-rounding level statistically neutral?

Reads protocol JSONs (``benchmarks/protocol.py``'s ``protocol-<family>.json``) of the same
family, suite and evaluation settings, trained before and after a change, and writes per
method and robot group the return (hierarchical 95% interval, per-seed means) before and
after at every support size at the method's shipped step count, and at ``--support`` a
two-sided exact permutation test on the per-seed means (every split of the pooled seeds;
seeds are the independent units). A row reads *unchanged* when the two intervals overlap
and p >= 0.05; otherwise *differs*.

``--before`` may be given more than once (a committed JSON for methods it holds, a fresh run
for the others): a method is taken from the first file that has it. The files must agree on
the suite's task files (sha256), supports, steps and episodes; a mismatch is an error naming
the file and the key.

    python benchmarks/compare_results.py --before bench-results/cmp-before/protocol-cartpole.json \\
        --before benchmarks/results/protocol-cartpole.json \\
        --after bench-results/cmp-after/protocol-cartpole.json --out bench-results/cmp.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

SETTINGS = ("task_files", "supports", "steps", "episodes")


def load(path: Path, suite: str) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read a protocol JSON ({exc})") from None
    if suite not in report.get("suites", {}):
        have = sorted(report.get("suites", {}))
        raise SystemExit(f"{path}: no suite {suite!r} (it has {have})")
    return report


def settings(report: dict[str, Any], suite: str) -> dict[str, Any]:
    s = report["suites"][suite]
    files = {g: f["sha256"] for g, f in s["task_files"].items()}
    return {
        "task_files": files,
        "supports": s["supports"],
        "steps": s["steps"],
        "episodes": s["episodes"],
    }


def check_same(reports: dict[Path, dict[str, Any]], suite: str) -> None:
    (first, ref), *rest = ((p, settings(r, suite)) for p, r in reports.items())
    families = {r["family"] for r in reports.values()}
    if len(families) > 1:
        raise SystemExit(f"the files are of different families: {sorted(families)}")
    for path, other in rest:
        for key in SETTINGS:
            if other[key] != ref[key]:
                raise SystemExit(
                    f"{path}: suite {suite!r} key {key!r} is {other[key]!r}, "
                    f"{first} has {ref[key]!r}: not comparable"
                )


def rows_of(report: dict[str, Any], suite: str) -> dict[tuple, dict[str, Any]]:
    fields = report["row_fields"]
    out = {}
    for values in report["suites"][suite]["rows"]:
        row = dict(zip(fields, values, strict=True))
        out[(row["method"], row["group"], row["support"], row["steps"])] = row
    return out


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation p-value of the difference of means."""
    pooled = [*a, *b]
    observed = abs(sum(a) / len(a) - sum(b) / len(b))
    total = sum(pooled)
    count = n = 0
    for chosen in itertools.combinations(range(len(pooled)), len(a)):
        sa = sum(pooled[i] for i in chosen)
        diff = abs(sa / len(a) - (total - sa) / len(b))
        count += diff >= observed - 1e-9
        n += 1
    return count / n


def compare(
    before: list[Path], after: Path, suite: str, support: int, methods: list[str] | None
) -> dict[str, Any]:
    reports = {p: load(p, suite) for p in [*before, after]}
    check_same(reports, suite)
    after_report = reports[after]
    shipped = after_report["suites"][suite]["analysis"]["shipped_steps"]
    after_rows = rows_of(after_report, suite)
    before_rows = [rows_of(reports[p], suite) for p in before]
    have_after = {k[0] for k in after_rows}
    wanted = methods or [m for m in shipped if m in have_after]
    supports = [0, *after_report["suites"][suite]["supports"]]
    groups = sorted({k[1] for k in after_rows})
    table = []
    for method in wanted:
        source = next(
            (before[i] for i, rows in enumerate(before_rows) if any(k[0] == method for k in rows)),
            None,
        )
        if source is None or method not in have_after:
            raise SystemExit(f"method {method!r} is not in every side (before: {source}, after)")
        rows = before_rows[before.index(source)]
        k = shipped[method]
        steps = after_report["suites"][suite]["steps"]
        # support 0 = before adapting (the rows at steps 0); then each support at the shipped
        # k; then the step curve at ``support``
        points = [(0, 0), *((n, k) for n in supports[1:])]
        points += [(support, j) for j in steps if j not in (0, k)]
        for group in groups:
            for n, j in points:
                key = (method, group, supports[1] if n == 0 else n, j)
                if key not in rows or key not in after_rows:
                    continue
                b, a = rows[key], after_rows[key]
                entry = {
                    "method": method,
                    "group": group,
                    "support": n,
                    "steps": j,
                    "before": _side(b),
                    "after": _side(a),
                    "before_file": str(source),
                }
                if n == support and j == k:
                    overlap = b["return_lo"] <= a["return_hi"] and a["return_lo"] <= b["return_hi"]
                    p = permutation_p(b["per_seed_return"], a["per_seed_return"])
                    entry.update(
                        p=p,
                        overlap=overlap,
                        verdict="unchanged" if overlap and p >= 0.05 else "differs",
                    )
                table.append(entry)
    return {
        "suite": suite,
        "support": support,
        "family": after_report["family"],
        "before": [str(p) for p in before],
        "after": str(after),
        "rows": table,
    }


def _side(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("return", "return_lo", "return_hi", "per_seed_return", "seeds")}


def _ci(side: dict[str, Any]) -> str:
    return f"{side['return']:.1f} [{side['return_lo']:.1f}, {side['return_hi']:.1f}]"


def markdown(result: dict[str, Any]) -> str:
    s = result["support"]
    lines = [
        f"# Before/after: {result['family']}, suite {result['suite']}",
        "",
        f"Before: {', '.join(result['before'])}; after: {result['after']}. Return [95% "
        f"hierarchical CI] at each method's shipped step count; at support {s} the per-seed "
        "means, an exact permutation test over the seeds and the verdict (unchanged: the "
        "intervals overlap and p >= 0.05).",
        "",
        f"## At {s} transitions",
        "",
        "| method | group | k | before | after | before per seed | after per seed | p | verdict |",
        "|---|---|---:|---|---|---|---|---:|---|",
    ]
    at = [r for r in result["rows"] if "verdict" in r]
    for r in at:
        b, a = r["before"], r["after"]
        per = lambda side: ", ".join(f"{x:.0f}" for x in side["per_seed_return"])  # noqa: E731
        lines.append(
            f"| {r['method']} | {r['group']} | {r['steps']} | {_ci(b)} | {_ci(a)} | {per(b)} | "
            f"{per(a)} | {r['p']:.2f} | {r['verdict']} |"
        )
    differs = sum(r["verdict"] == "differs" for r in at)
    lines += ["", f"{len(at) - differs} of {len(at)} rows unchanged, {differs} differ.", ""]
    lines += [
        "## Every support size (0: before adapting) and step count",
        "",
        "| method | group | support | k | before | after |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['group']} | {r['support']} | {r['steps']} | "
            f"{_ci(r['before'])} | {_ci(r['after'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--before",
        type=Path,
        action="append",
        required=True,
        help="protocol JSON before the change (repeatable; first file wins)",
    )
    ap.add_argument("--after", type=Path, required=True, help="protocol JSON after the change")
    ap.add_argument("--suite", default="heldout")
    ap.add_argument("--support", type=int, default=200, help="support size of the tests")
    ap.add_argument("--methods", help="comma list (default: every method of the after file)")
    ap.add_argument("--out", type=Path, help="markdown file (a .json beside it)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    result = compare(args.before, args.after, args.suite, args.support, methods)
    text = markdown(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, allow_nan=True))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
