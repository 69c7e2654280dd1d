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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robometa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help=cmd_envs.__doc__)
    p.add_argument("--episodes", type=int, default=5, help="episodes per family (default 5)")
    p.add_argument("--seed", type=int, default=0, help="task and action seed (default 0)")
    p.set_defaults(func=cmd_envs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
