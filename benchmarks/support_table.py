"""The support-size table of an adaptation benchmark run, as markdown.

Reads the JSON ``benchmarks/adaptation.py --support 10,50,200`` wrote and prints, per robot
family, one row per method: the return before adapting (0 steps, at the largest support
size), then the return after adapting (the last step count <= ``--max-steps``) with its 95%
interval at each support size, for each task group (``id``, ``ood``, ...), and the normalized score at
the largest size (``--groups`` picks the task groups; default: all of them). Nothing is
recomputed: every number is the JSON's.

    python benchmarks/support_table.py bench-results/adaptation.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _cell(row: dict | None, key: str = "return", bold: bool = False) -> str:
    if row is None or math.isnan(row[key]):
        return "-"
    text = f"{row[key]:.1f}" if key == "return" else f"{row[key]:.2f}"
    text = f"**{text}**" if bold else text
    return (
        f"{text} [{row[key + '_lo']:.1f}, {row[key + '_hi']:.1f}]"
        if key == "return"
        else (f"{text} [{row[key + '_lo']:.2f}, {row[key + '_hi']:.2f}]")
    )


def family_table(summary: list[dict], max_steps: int = 5, groups: list[str] | None = None) -> str:
    """The markdown table of one family's summary rows (see the module docstring) for
    ``groups`` (default: every group, in the summary's order; the first gives the 0-step and
    score columns)."""
    sizes = sorted({r["support"] for r in summary if "support" in r})
    if not sizes:
        raise ValueError(
            "the summary has no support sizes: run benchmarks/adaptation.py with --support"
        )
    present = list(dict.fromkeys(r["group"] for r in summary))
    groups = present if groups is None else groups
    missing = [g for g in groups if g not in present]
    if missing or not groups:
        raise ValueError(
            f"no group {', '.join(missing) or '(none given)'} in the summary (it has "
            f"{', '.join(present)})"
        )
    methods = list(dict.fromkeys(r["method"] for r in summary))

    def final(method: str, group: str, size: int) -> dict | None:
        rows = [
            r
            for r in summary
            if r["method"] == method
            and r["group"] == group
            and r.get("support") == size
            and r["steps"] <= max_steps
        ]
        return max(rows, key=lambda r: r["steps"]) if rows else None

    def unadapted(method: str, group: str) -> dict | None:
        rows = [
            r
            for r in summary
            if r["method"] == method
            and r["group"] == group
            and r.get("support") == sizes[-1]
            and r["steps"] == 0
        ]
        return rows[0] if rows else None

    best = {
        (g, k): max(
            (final(m, g, k)["return"] for m in methods if final(m, g, k) is not None),
            default=math.nan,
        )
        for g in groups
        for k in sizes
    }
    head = ["method", *(f"{g}: 0 steps" for g in groups[:1])]
    head += [f"{g}: {k} transitions" for g in groups for k in sizes]
    head += [f"{groups[0]}: score, {sizes[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [m, _cell(unadapted(m, groups[0])).split(" [")[0]]
        for g in groups:
            for k in sizes:
                row = final(m, g, k)
                top = row is not None and math.isclose(row["return"], best[(g, k)])
                cells.append(_cell(row, bold=top))
        cells.append(_cell(final(m, groups[0], sizes[-1]), key="score"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="what benchmarks/adaptation.py --support wrote")
    p.add_argument("--families", help="comma list (default: every family in the file)")
    p.add_argument("--max-steps", type=int, default=5, help="the adapted column's step limit")
    p.add_argument("--groups", help="comma list of task groups (default: every group)")
    args = p.parse_args(argv)
    try:
        doc = json.loads(args.json.read_text(encoding="utf-8"))
        families = doc["families"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{args.json}: not an adaptation benchmark JSON ({err})") from None
    wanted = args.families.split(",") if args.families else list(families)
    unknown = [f for f in wanted if f not in families]
    if unknown:
        raise SystemExit(
            f"--families {','.join(unknown)}: not in {args.json} (it has {', '.join(families)})"
        )
    for family in wanted:
        try:
            groups = args.groups.split(",") if args.groups else None
            table = family_table(families[family]["summary"], args.max_steps, groups)
        except ValueError as err:
            raise SystemExit(f"{args.json}: {family}: {err}") from None
        print(f"\n{family} ({families[family]['env_id']}):\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
