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
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ("dr", "oracle", "cavia", "maml", "fomaml", "metasgd", "anil", "reptile")
META = ("cavia", "maml", "fomaml", "metasgd", "anil", "reptile")
TARGET_META = 0.9
TARGET_DR_BELOW = 0.6
# Relative training cost per run at the shipped budgets (measured on CartPole): the pool
# starts the costliest first.
COST = {"metasgd": 3.6, "maml": 3.2, "anil": 2.0, "fomaml": 1.8, "reptile": 1.8, "cavia": 1.4}


def train_runs(
    family: str,
    methods: list[str],
    seeds: list[int],
    steps: int | None,
    runs_dir: Path,
    jobs: int = 1,
    oracle_steps: int | None = None,
) -> list[Path]:
    """Train every (method, seed) of ``family`` that has no finished run yet, ``jobs`` at a time.

    Each run's output goes to ``<run>.log`` next to it; this process shows one progress bar
    over the runs. The costliest runs start first, so the pool drains evenly.
    """
    import shutil
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm import tqdm

    from robometa.train import train_to_log

    runs, todo = [], []
    for method in methods:
        config = ROOT / "configs" / f"{family}_{method}.yaml"
        if not config.exists():
            print(f"[skip] no config {config.relative_to(ROOT)}", flush=True)
            continue
        for seed in seeds:
            run = runs_dir / family / f"{method}-seed{seed}"
            runs.append(run)
            if (run / "policy.pt").exists():
                print(f"[reuse] {run}", flush=True)
                continue
            if run.exists():
                shutil.rmtree(run)  # an unfinished run of an earlier benchmark
            run.parent.mkdir(parents=True, exist_ok=True)
            budget = steps if method != "oracle" else oracle_steps
            todo.append((COST.get(method, 1.0), str(config), budget, seed, run))
    todo.sort(key=lambda job: -job[0])
    if not todo:
        return runs
    bar = tqdm(total=len(todo), unit="run", desc=f"train {family}", mininterval=0)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(train_to_log, c, str(run), str(run) + ".log", b, seed): run
            for _, c, b, seed, run in todo
        }
        for future in as_completed(futures):
            run = futures[future]
            try:
                seconds = future.result()
            except Exception as err:
                pool.shutdown(cancel_futures=True)
                raise RuntimeError(f"training {run} failed; see {run}.log") from err
            bar.write(f"[trained] {run} in {seconds:.0f} s")
            bar.update()
    bar.close()
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
    p.add_argument("--oracle-steps", type=int, help="override the oracle's env-step budget")
    p.add_argument("--n-tasks", type=int, default=10, help="held-out tasks per group")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--runs-dir", default="bench-results/runs")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="training runs at a time (each uses one core)",
    )
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
        runs = train_runs(
            family, methods, seeds, args.steps, Path(args.runs_dir), args.jobs, args.oracle_steps
        )
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
