"""The ``robometa`` command line."""

from __future__ import annotations

import argparse
import sys


def cmd_envs(args: argparse.Namespace) -> int:
    """Roll out a random policy on every robot family and print the returns."""
    import gymnasium as gym
    import numpy as np

    import robometa.envs

    print(f"{'env':26} {'task split':10} {'episodes':>8} {'mean return':>12}")
    for env_id in robometa.envs.FAMILIES:
        env = gym.make(env_id)
        rng = np.random.default_rng(args.seed)
        returns = []
        for i, task in enumerate(env.unwrapped.sample_tasks(args.episodes, seed=args.seed)):
            env.unwrapped.set_task(task)
            env.reset(seed=args.seed + i)
            total, done = 0.0, False
            while not done:
                _, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
                total += r
                done = term or trunc
            returns.append(total)
        env.close()
        print(f"{env_id:26} {'train':10} {len(returns):8d} {np.mean(returns):12.2f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or meta-train) a policy from a YAML config into a run directory."""
    from robometa.config import load_config
    from robometa.train import train

    if args.resume:
        train(None, args.resume, resume=True)  # type: ignore[arg-type]
        print(f"resumed and finished {args.resume}")
        return 0
    if args.config is None:
        raise SystemExit("robometa train: give a CONFIG.yaml (or --resume RUN_DIR)")
    from robometa.configs import resolve

    config = resolve(args.config)
    cfg = load_config(config, args.set or (), steps=args.steps, seed=args.seed)
    out = args.out or f"runs/{config.stem}-seed{cfg.seed}"
    train(cfg, out)
    print(f"run written to {out} (policy.pt, metrics.csv, learning_curve.png)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate trained runs on held-out robots: adaptation curves and normalized scores."""
    from robometa.evaluate import run_evaluation

    steps = [int(k) for k in args.curve.split(",")] if args.curve else None
    run_evaluation(
        args.runs,
        tasks=args.tasks,
        n_tasks=args.n_tasks,
        episodes=args.episodes,
        steps=steps,
        out=args.out,
        fine_tune=not args.no_fine_tune,
    )
    print(f"wrote {args.out}/results.md, results.json, adaptation.png")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """List the shipped configs (one line each), or print one to start your own from."""
    import yaml

    from robometa.configs import available, resolve, summary

    if args.name:
        print(resolve(args.name).read_text(encoding="utf-8"), end="")
        return 0
    shipped = available()
    width = max(map(len, shipped))
    print(f"{'name':{width}}  {'algorithm':9}  {'env':14}  {'env steps':>9}  description")
    for name, path in shipped.items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        env = str(raw.get("env", {}).get("id", "")).split("/")[-1]
        steps = raw.get("dqn", {}).get("total_steps", "")
        text = summary(path)
        text = text if len(text) <= 90 else text[:89] + "…"
        print(f"{name:{width}}  {raw.get('algorithm', ''):9}  {env:14}  {steps:>9}  {text}")
    print("\ntrain one with `robometa train NAME`; `robometa configs NAME` prints it")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Meta-train, evaluate, export and adapt on held-out robots through the runtime."""
    from robometa.quickstart import run_quickstart

    run_quickstart(
        args.out,
        meta_steps=args.meta_steps,
        baseline_steps=args.baseline_steps,
        eval_tasks=args.eval_tasks,
        seed=args.seed,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from robometa import __version__

    parser = argparse.ArgumentParser(prog="robometa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"robometa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help=cmd_envs.__doc__)
    p.add_argument("--episodes", type=int, default=5, help="episodes per family (default 5)")
    p.add_argument("--seed", type=int, default=0, help="task and action seed (default 0)")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser(
        "quickstart", help=cmd_quickstart.__doc__, description=cmd_quickstart.__doc__
    )
    p.add_argument("--out", default="quickstart", help="output directory (default: quickstart)")
    p.add_argument(
        "--meta-steps",
        type=int,
        default=30000,
        help="env steps of CAVIA meta-training (default 30000)",
    )
    p.add_argument(
        "--baseline-steps",
        type=int,
        default=30000,
        help="env steps of the domain-randomized DQN baseline (default 30000)",
    )
    p.add_argument(
        "--eval-tasks",
        type=int,
        default=5,
        help="held-out tasks per group in the evaluation (default 5)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("configs", help=cmd_configs.__doc__, description=cmd_configs.__doc__)
    p.add_argument("name", nargs="?", help="a shipped config to print (default: list them all)")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument(
        "config",
        nargs="?",
        help="experiment YAML: a path, or a shipped config's name (`robometa configs` lists them)",
    )
    p.add_argument("--out", help="run directory (default: runs/<config name>-seed<seed>)")
    p.add_argument("--steps", type=int, help="override dqn.total_steps (environment steps)")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set dqn.learning_rate=3e-4",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    p.add_argument("runs", nargs="+", help="run directories (several seeds of a method pool)")
    p.add_argument(
        "--tasks",
        default="test",
        help="'test' (held-out in-distribution + out-of-distribution tasks) or a "
        "task file (YAML/JSON with a 'tasks' list)",
    )
    p.add_argument("--n-tasks", type=int, default=10, help="tasks per group with --tasks test")
    p.add_argument("--episodes", type=int, default=2, help="greedy episodes per task and step")
    p.add_argument(
        "--curve",
        help="adaptation steps to evaluate, e.g. 0,1,2,5 "
        "(default: 0,1,2,3 and each run's configured steps)",
    )
    p.add_argument("--no-fine-tune", action="store_true", help="skip the DR + fine-tuning baseline")
    p.add_argument("--out", default="eval", help="report directory (default: eval)")
    p.set_defaults(func=cmd_eval)

    from robometa.export import add_export_command

    add_export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"robometa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
