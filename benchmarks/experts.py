"""Per-robot experts: is the protocol's upper bound one?

For each picked robot of a versioned held-out file (``configs/tasks/<family>/<suite>/<group>.yaml``)
trains a DQN on that robot alone (the method's shipped config with ``env.tasks: nominal`` and
every dynamics parameter's nominal value set to the robot's: no randomization at all), then
measures its greedy return on that robot with the evaluation harness's episode seeds (robot
``i``: ``reset(seed=10000 + i + e)`` for episode ``e``, as ``robometa eval`` does). With
``--compare`` (a ``benchmarks/protocol.py`` evaluation, ``results.json`` under its runs
directory) it sets the experts beside every method's return on the same robots (mean over
training seeds, 200 transitions, each method's shipped step count) and says whether the
protocol's bound (the privileged runs) is below the experts.

    python benchmarks/experts.py --family cartpole --robots 0,1,2,3,4,5 --out /tmp/experts.json \\
        --compare bench-results/protocol-runs/cartpole/protocol-heldout/results.json

Each expert is ``robometa train configs/<family>_<method>.yaml --set env.tasks=nominal`` with the
robot's values as nominal (``--steps`` overrides the budget); finished runs in ``--runs-dir``
are reused, unfinished ones resume.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # benchmarks/protocol.py: the rows and the shipped step counts

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 10_000


def family_env_id(family: str) -> str:
    """The env id of a family's directory name (``cartpole``: ``robometa/CartPole-v0``)."""
    from robometa import task_suites

    known = {f.directory: f.env_id for f in task_suites.FAMILIES}
    if family not in known:
        raise SystemExit(f"--family: unknown family {family!r}; known: {', '.join(known)}")
    return known[family]


def expert_overrides(task: dict) -> list[str]:
    """The ``--set`` overrides that train on ``task`` alone: the nominal robot, with every
    parameter's nominal value the robot's."""
    dynamics = {name: {"nominal": float(value)} for name, value in task.items()}
    return ["env.tasks=nominal", f"env.dynamics={json.dumps(dynamics)}"]


def robot_return(run: Path, task: dict, index: int, episodes: int) -> float:
    """The greedy return of ``run``'s policy on ``task`` with the harness's episode seeds."""
    from robometa.evaluate import _returns
    from robometa.policy import Policy
    from robometa.rollout import greedy_act_fn, make_env

    policy = Policy.load(run)
    env = make_env(policy.env_id, policy.dynamics)
    space = env.unwrapped.dynamics_space
    value = _returns(
        env,
        greedy_act_fn(policy.net, policy.params),
        space.make_task(task),
        episodes,
        EVAL_SEED + index,
    )
    env.close()
    return value


def compare(report: dict, group: str, robots: list[int], experts: dict[int, float]) -> dict:
    """Every method's mean return over training seeds on the picked robots beside the
    experts'."""
    ks = protocol.shipped_steps(report)
    out = {}
    for method in report["returns"]:
        grid = protocol.grid(report, method, group, protocol.AT_SUPPORT, ks[method])
        if grid is None:
            continue
        per_robot = grid.mean(axis=0)
        out[method] = {str(i): float(per_robot[i]) for i in robots}
    mean_expert = float(np.mean([experts[i] for i in robots]))
    means = {m: float(np.mean(list(v.values()))) for m, v in out.items()}
    privileged = [m for m in means if protocol.bench.is_oracle(m)]
    above = sorted(m for m, v in means.items() if v > mean_expert)
    return {
        "per_robot": out,
        "mean": means,
        "mean_expert": mean_expert,
        "bound": {m: means[m] for m in privileged},
        "methods_above_experts": above,
    }


def main(argv: list[str] | None = None) -> int:
    from robometa import task_suites
    from robometa.config import load_config
    from robometa.train import run_logged, run_status, train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="cartpole")
    p.add_argument("--suite", default="heldout")
    p.add_argument("--group", default="id", help="the task file of the suite (its stem)")
    p.add_argument("--robots", default="0,1,2,3,4,5", help="indices into the task file")
    p.add_argument("--method", default="dr", help="configs/<family>_<method>.yaml to train")
    p.add_argument("--steps", type=int, help="env-step budget (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--runs-dir", default="bench-results/expert-runs")
    p.add_argument("--compare", help="a protocol evaluation's results.json (same suite)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    env_id = family_env_id(args.family)
    path = task_suites.suite_dir(args.suite, env_id) / f"{args.group}.yaml"
    from robometa.rollout import make_env

    env = make_env(env_id)
    tasks = task_suites.load_task_file(path, env.unwrapped.dynamics_space, env_id)
    env.close()
    robots = [int(i) for i in args.robots.split(",")]
    bad = [i for i in robots if not 0 <= i < len(tasks)]
    if bad:
        p.error(f"--robots: {bad[0]} is not an index of {path} (0..{len(tasks) - 1})")
    t0 = time.perf_counter()
    experts: dict[int, float] = {}
    record: dict = {
        "family": args.family,
        "task_file": protocol._relative(str(path)),  # no machine's path in the JSON
        "method": args.method,
        "steps": None,
        "seed": args.seed,
        "episodes": args.episodes,
        "robots": {},
    }
    for n, i in enumerate(robots):
        task = dict(tasks[i])
        run = Path(args.runs_dir) / args.family / f"{args.group}-{i}-{args.method}-seed{args.seed}"
        config = ROOT / "configs" / f"{args.family}_{args.method}.yaml"
        cfg = load_config(config, expert_overrides(task), steps=args.steps, seed=args.seed)
        record["steps"] = cfg.dqn.total_steps
        status = run_status(run, cfg)
        if status == "stale":
            raise SystemExit(f"{run} holds another experiment; remove it or pick --runs-dir")
        if status != "finished":
            run.parent.mkdir(parents=True, exist_ok=True)
            if status == "resumable":
                run_logged(f"{run}.log", train, None, run, resume=True, append=True)
            else:
                run_logged(f"{run}.log", train, cfg, run)
        experts[i] = robot_return(run, task, i, args.episodes)
        record["robots"][str(i)] = {
            "task": task,
            "expert_return": experts[i],
            "run": protocol._relative(str(run)),
            "train_s": protocol.run_seconds(run),  # its training's wall time, when it ran
        }
        print(
            f"[{n + 1}/{len(robots)}] robot {i} (motor_sign {task.get('motor_sign', '-')}): "
            f"expert {experts[i]:.1f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    if args.compare:
        report = json.loads(Path(args.compare).read_text())
        record["compare"] = compare(report, args.group, robots, experts)
        c = record["compare"]
        print(f"\nmean over robots {robots}: experts {c['mean_expert']:.1f}")
        for m, v in sorted(c["mean"].items(), key=lambda kv: -kv[1]):
            print(f"  {m}: {v:.1f}{'  (privileged)' if m in c['bound'] else ''}")
        if c["methods_above_experts"]:
            print(f"above the experts: {', '.join(c['methods_above_experts'])}")
    record["wall_s"] = time.perf_counter() - t0  # this invocation (reused runs cost nothing)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(math.isfinite(v) for v in experts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
