"""The adaptation benchmark's wall-clock, this tree against an earlier commit, from one run.

``python benchmarks/adaptation_speed.py --baseline-ref 0964d52 --out FILE.json [-- ARGS]`` runs
``benchmarks/adaptation.py ARGS`` (default: no arguments, the benchmark's own defaults) twice,
one after the other on the same machine: first with the given commit, checked out into a
temporary worktree (removed afterwards) and imported from there, then with this tree, each
into its own fresh runs directory so nothing is reused. It records each one's wall-clock and
CPU time (the benchmark and every training process it starts), the speed-up, and whether the
two reach the same claim-check outcome (the per-group pass/fail of ``check_claim``). Target:
this tree's wall-clock at most 0.5x the baseline's, with the same outcome.

Each tree runs its own ``benchmarks/adaptation.py`` with its own ``configs/``. Unless ARGS name
``--methods``, both get the baseline's default method list (read from the baseline's
``benchmarks/adaptation.py``): the benchmark's defaults have grown since (today they train every
registered method, 0964d52 trained eight), and timing different amounts of work would not be a
speed-up. ``--own-defaults`` times each tree with its own defaults instead ("what a user of
that commit waited for", more methods and all); the report records which was run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.5


def _throughput_module() -> Any:
    """The worktree and site-directory machinery of ``train_throughput.py`` (one copy)."""
    spec = importlib.util.spec_from_file_location(
        "train_throughput_bench", Path(__file__).with_name("train_throughput.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: put in the baseline's site directory: every process of the baseline (the benchmark and
#: each training worker it spawns) drops the editable install's import hook at start-up, so
#: a module the old tree lacks is an ImportError rather than the current tree's copy
SITECUSTOMIZE = """\
import sys
sys.meta_path[:] = [
    f for f in sys.meta_path
    if not ((getattr(f, "__module__", "") or "").startswith("__editable__")
            and "robometa" in (getattr(f, "__module__", "") or ""))
]
"""
#: imported by the check: what the adaptation benchmark's processes load
CHECKED_MODULES = ("robometa.train", "robometa.evaluate", "robometa.envs", "robometa.deploy")
_CHECK = """\
import importlib, os, sys
for name in {modules!r}:
    importlib.import_module(name)
tree = os.path.realpath({tree!r})
outside = sorted(
    f"{{n}}: {{os.path.realpath(m.__file__)}}"
    for n, m in list(sys.modules.items())
    if (n == "robometa" or n.startswith("robometa.")) and getattr(m, "__file__", None)
    and not os.path.realpath(m.__file__).startswith(tree + os.sep)
)
print(os.path.realpath(sys.modules["robometa"].__file__))
print("\\n".join(outside))
"""


def _python(tree: Any, script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -c script`` in ``tree``'s environment, output captured. ``cwd``: not this
    checkout ("-c" puts the working directory first on sys.path)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env=tree.env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_import(tree: Any, cwd: Path) -> str:
    """Where ``robometa`` and the modules the benchmark uses resolve for ``tree``'s processes;
    an error when any is not inside ``tree`` (the measurement would time the wrong code)."""
    if tree.site is not None and not (tree.site / "sitecustomize.py").exists():
        (tree.site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    done = _python(tree, _CHECK.format(modules=CHECKED_MODULES, tree=str(tree.root)), cwd)
    where, *outside = done.stdout.strip().splitlines() or [""]
    outside = [line for line in outside if line]
    if done.returncode != 0 or not Path(where).is_relative_to(tree.root) or outside:
        found = "; ".join(outside) or where or done.stderr.strip()[-500:]
        raise SystemExit(f"{tree.name}: robometa imports from {found!r}, not from {tree.root}")
    return where


_DEFAULT_METHODS = """\
import importlib.util
spec = importlib.util.spec_from_file_location("adaptation_bench", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(",".join(module.DEFAULT_METHODS))
"""


def default_methods(tree: Any, cwd: Path) -> str:
    """``tree``'s ``benchmarks/adaptation.py`` default ``--methods`` (a comma list), read in
    ``tree``'s own environment (its module imports that tree's robometa)."""
    path = str(tree.root / "benchmarks" / "adaptation.py")
    done = _python(tree, _DEFAULT_METHODS.format(path=path), cwd)
    methods = done.stdout.strip()
    if done.returncode != 0 or not methods:
        raise SystemExit(
            f"{tree.name}: could not read DEFAULT_METHODS from {path}: "
            f"{done.stderr.strip()[-500:] or 'empty output'}"
        )
    return methods


def run_benchmark(tree: Any, args: list[str], work: Path) -> dict[str, Any]:
    """``tree``'s ``benchmarks/adaptation.py ARGS`` in a fresh runs directory: wall and CPU
    time (children included), exit code, and its report."""
    out, runs, log = work / "adaptation.json", work / "runs", work / "adaptation.log"
    command = [
        sys.executable,
        str(tree.root / "benchmarks" / "adaptation.py"),
        *args,
        "--out",
        str(out),
        "--runs-dir",
        str(runs),
    ]
    print(f"[{tree.name}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, env=tree.env(), cwd=work, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = {
        "tree": tree.describe(),
        "command": command[1:],
        "returncode": done.returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_util": cpu / wall if wall > 0 else None,
    }
    if done.returncode != 0 or not out.exists():
        result["error"] = log.read_text()[-3000:]
        return result
    report = json.loads(out.read_text())
    result["report"] = report
    result["claim"] = {
        family: {group: c["pass"] for group, c in r["claim"].items()}
        for family, r in report["families"].items()
    }
    print(
        f"[{tree.name}] {wall:.0f} s wall, {cpu:.0f} s CPU, claim {result['claim']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    base, cur = report["baseline"], report["current"]
    lines = [
        "| tree | commit | wall s | CPU s | CPU util | claim check (pass per family/group) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in (base, cur):
        claim = "; ".join(
            f"{fam}/{group}: " + ", ".join(f"{k}={'pass' if v else 'MISS'}" for k, v in c.items())
            for fam, groups in r.get("claim", {}).items()
            for group, c in groups.items()
        )
        util = f"{r['cpu_util']:.2f}" if r.get("cpu_util") else "n/a"
        lines.append(
            f"| {r['label']} | "
            f"{r['tree']['commit'][:10]} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {util} | "
            f"{claim or r.get('error', '')[:80]} |"
        )
    ratio = report["ratio"]
    if report.get("own_defaults"):
        work = "each tree ran its own defaults (different method lists)"
    else:
        work = f"both trees ran `{' '.join(report['arguments']) or '(no arguments)'}`"
    lines += [
        "",
        work,
        "",
        f"wall-clock ratio current / baseline: {ratio:.2f} (target <= {TARGET_RATIO}: "
        f"{'PASS' if report['pass']['ratio'] else 'MISS'}); same claim-check outcome: "
        f"{'yes' if report['pass']['same_claim'] else 'NO'}",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, cur = report["baseline"], report["current"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"baseline\n{base['tree']['commit'][:8]}", f"current\n{cur['tree']['commit'][:8]}"]
    walls = [base["wall_s"] / 60, cur["wall_s"] / 60]
    bars = ax.bar(labels, walls, color=["#999999", "#1f77b4"])
    ax.axhline(
        TARGET_RATIO * walls[0], color="#d62728", linestyle="--", label="target: 0.5x baseline"
    )
    for bar, w in zip(bars, walls, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, w, f"{w:.1f} min", ha="center", va="bottom")
    ax.set_ylabel("wall-clock (minutes)")
    ax.set_title(f"benchmarks/adaptation.py: {report['ratio']:.2f}x the baseline's wall-clock")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (.md and .png beside it)")
    p.add_argument("--baseline-ref", required=True, help="the earlier commit, e.g. 0964d52")
    p.add_argument(
        "--own-defaults",
        action="store_true",
        help="time each tree with its own default arguments; default: unless ARGS name "
        "--methods, both trees train the baseline's default method list",
    )
    args = p.parse_args(argv)
    if args.own_defaults and passthrough:
        p.error("--own-defaults times each tree's defaults: pass no ARGS after --")
    tt = _throughput_module()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"target_ratio": TARGET_RATIO, "own_defaults": args.own_defaults}
    with tt.terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="adapt-speed-") as tmp:
        with tt.baseline_tree(args.baseline_ref) as base:
            work = Path(tmp) / "baseline"
            work.mkdir()
            check_import(base, work)
            if not args.own_defaults and not any(
                a == "--methods" or a.startswith("--methods=") for a in passthrough
            ):
                passthrough = [*passthrough, "--methods", default_methods(base, work)]
            report["arguments"] = passthrough
            report["baseline"] = run_benchmark(base, passthrough, work) | {"label": "baseline"}
        current = tt.current_tree()
        work = Path(tmp) / "current"
        work.mkdir()
        check_import(current, work)
        report["current"] = run_benchmark(current, passthrough, work) | {"label": "current"}
    base, cur = report["baseline"], report["current"]
    failed = [r["label"] for r in (base, cur) if "error" in r]
    report["ratio"] = cur["wall_s"] / base["wall_s"] if base["wall_s"] > 0 else float("nan")
    report["pass"] = {
        "ratio": bool(report["ratio"] <= TARGET_RATIO) and not failed,
        "same_claim": not failed and base.get("claim") == cur.get("claim"),
    }
    out.write_text(json.dumps(report, indent=1))
    table = markdown(report)
    out.with_suffix(".md").write_text(table + "\n")
    plot(report, out.with_suffix(".png"))
    print(table)
    if failed:
        print(f"failed: {', '.join(failed)} (see the error in {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
