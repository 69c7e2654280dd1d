"""The headline comparison: meta-learners vs domain randomization on held-out robots.

For each robot family, trains every method from its config under ``configs/`` (reusing runs
that already finished), evaluates them with the adaptation harness on held-out
in-distribution (``id``) and out-of-distribution (``ood``) tasks, and checks the claim: the best
meta-learner reaches a normalized score >= 0.9 after <= 5 steps on <= 200 transitions, domain
randomization without adaptation stays below 0.6, and DR + fine-tuning stays below the best
meta-learner.

    python benchmarks/adaptation.py --out bench-results/adaptation.json

Each row of the table is reproduced by ``robometa train configs/<family>_<method>.yaml`` and
``robometa eval``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ("dr", "oracle", "cavia", "maml", "fomaml", "metasgd", "anil", "reptile")
META = ("cavia", "maml", "fomaml", "metasgd", "anil", "reptile")
TARGET_META = 0.9
TARGET_DR_BELOW = 0.6


def train_runs(
    family: str, methods: list[str], seeds: list[int], steps: int | None, runs_dir: Path
) -> list[Path]:
    from robometa.config import load_config
    from robometa.train import train

    runs = []
    for method in methods:
        config = ROOT / "configs" / f"{family}_{method}.yaml"
        if not config.exists():
            print(f"[skip] no config {config.relative_to(ROOT)}", flush=True)
            continue
        for seed in seeds:
            run = runs_dir / family / f"{method}-seed{seed}"
            if (run / "policy.pt").exists():
                print(f"[reuse] {run}", flush=True)
            else:
                if run.exists():
                    import shutil

                    shutil.rmtree(run)  # an unfinished run of an earlier benchmark
                cfg = load_config(config, steps=steps if method != "oracle" else None, seed=seed)
                t = time.perf_counter()
                train(cfg, run)
                print(f"[trained] {run} in {time.perf_counter() - t:.0f} s", flush=True)
            runs.append(run)
    return runs


def check_claim(summary: list[dict], max_steps: int) -> dict:
    """Compare the final-step scores on held-out tasks with the targets."""
    out = {}
    for group in sorted({r["group"] for r in summary}):
        final: dict[str, float] = {}
        for r in summary:
            if r["group"] == group and r["steps"] <= max_steps:
                if r["method"] not in final or r["steps"] >= final[r["method"]][0]:
                    final[r["method"]] = (r["steps"], r["score"], r["score_lo"], r["score_hi"])
        metas = {m: v for m, v in final.items() if m in META and not math.isnan(v[1])}
        best = max(metas, key=lambda m: metas[m][1]) if metas else None
        dr = final.get("dr", (0, math.nan))[1]
        drft = final.get("dr+finetune", (0, math.nan))[1]
        best_score = metas[best][1] if best else math.nan
        out[group] = {
            "best_meta_learner": best,
            "best_meta_score": best_score,
            "dr_score": dr,
            "dr_finetune_score": drft,
            "targets": {
                "best_meta_score": f">= {TARGET_META}",
                "dr_score": f"< {TARGET_DR_BELOW}",
                "dr_finetune_score": "< best_meta_score",
            },
            "pass": {
                "best_meta_score": bool(best_score >= TARGET_META),
                "dr_score": bool(dr < TARGET_DR_BELOW),
                "dr_finetune_below_meta": bool(drft < best_score),
            },
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--families", default="cartpole", help="comma list, e.g. cartpole,reacher")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2")
    p.add_argument(
        "--steps",
        type=int,
        help="override every method's env-step budget (the oracle keeps its own)",
    )
    p.add_argument("--n-tasks", type=int, default=10, help="held-out tasks per group")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--runs-dir", default="bench-results/runs")
    args = p.parse_args(argv)

    from robometa.evaluate import run_evaluation

    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "families": {},
    }
    for family in args.families.split(","):
        runs = train_runs(family, methods, seeds, args.steps, Path(args.runs_dir))
        out_dir = Path(args.runs_dir) / family / "eval"
        res = run_evaluation(
            runs, tasks="test", n_tasks=args.n_tasks, episodes=args.episodes, out=out_dir
        )
        report["families"][family] = {
            "env_id": res["env_id"],
            "runs": res["runs"],
            "summary": res["summary"],
            "fine_tune": res["fine_tune"],
            "claim": check_claim(res["summary"], max_steps=5),
            "report_dir": str(out_dir),
        }
    report["wall_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for family, r in report["families"].items():
        print(f"\n{family}: claim check")
        for group, c in r["claim"].items():
            print(
                f"  {group}: best meta-learner {c['best_meta_learner']} "
                f"{c['best_meta_score']:.2f} (>= {TARGET_META}: {c['pass']['best_meta_score']}), "
                f"DR {c['dr_score']:.2f} (< {TARGET_DR_BELOW}: {c['pass']['dr_score']}), "
                f"DR+FT {c['dr_finetune_score']:.2f} (below best: "
                f"{c['pass']['dr_finetune_below_meta']})"
            )
    print(f"\nwrote {out} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
