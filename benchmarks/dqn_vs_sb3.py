"""robometa's DQN against Stable-Baselines3's DQN on the nominal cart-pole, side by side.

Both agents learn ``robometa/CartPole-v0`` on its nominal robot with the same seeds, in this
one process, alternating seed by seed so that they share the machine's load:

* SB3 ``DQN`` with RL Zoo's CartPole-v1 hyperparameters (``SB3_HYPERPARAMETERS``; Zoo trains
  for 50,000 steps, so ``learn(total_timesteps=50_000)`` keeps its exploration schedule and a
  callback stops it at ``--max-steps``);
* robometa's ``DQN`` with ``configs/cartpole_dqn.yaml``, stepped by a small loop around the
  ``DQN`` class (``iterate()``: one vector step plus the scheduled gradient steps).

Solved: the first evaluation point where the greedy policy's mean return over 5 episodes
(nominal robot, fixed start seeds) is at least 195 of the 200 possible. Evaluations run every
``--eval-every`` env steps with the same code for both (``robometa.rollout.episode_return``).
A seed that never solves counts as ``--max-steps`` in the mean (so that mean is a lower bound)
and is listed. robometa fits its input normalization on 2,000 random-action env steps before
training; they are reported, and counted in ``steps_to_solve_incl_setup``.

Timing: seconds of training per 10,000 env steps, evaluation and construction excluded, both
wall-clock and this process's CPU time; torch runs on one thread for both. Each agent runs
the full ``--max-steps`` so both are timed over the same span of training.

Targets: robometa needs no more env steps to solve than SB3 (mean over seeds) and no more
wall-clock per step.

    python benchmarks/dqn_vs_sb3.py --out /tmp/dqn_vs_sb3.json              # 5 seeds
    python benchmarks/dqn_vs_sb3.py --out x.json --seeds 1 --max-steps 4000  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robometa.config import load_config
from robometa.methods.dqn import DQN
from robometa.rollout import episode_return, greedy_act_fn, make_env

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "robometa/CartPole-v0"
SOLVED_RETURN = 195.0
EVAL_EPISODES = 5
EVAL_SEED = 10_000  # start states of the evaluation episodes: EVAL_SEED + i
ZOO_TIMESTEPS = 50_000

#: RL Zoo (rl-baselines3-zoo, hyperparams/dqn.yml), CartPole-v1
SB3_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [256, 256]},
}


class Evaluator:
    """Greedy return on the nominal robot every ``every`` env steps; records the first solve."""

    def __init__(self, every: int) -> None:
        self.env = make_env(ENV_ID)
        self.task = self.env.unwrapped.dynamics_space.nominal()
        self.every = every
        self.next = every
        self.curve: list[tuple[int, float]] = []
        self.solved_at: int | None = None
        self.seconds = 0.0

    def due(self, env_steps: int) -> bool:
        return env_steps >= self.next

    def __call__(self, env_steps: int, act: Callable[[np.ndarray], int]) -> None:
        t0 = time.perf_counter()
        ret = float(
            np.mean(
                [
                    episode_return(self.env, act, self.task, EVAL_SEED + i)
                    for i in range(EVAL_EPISODES)
                ]
            )
        )
        self.curve.append((env_steps, ret))
        if self.solved_at is None and ret >= SOLVED_RETURN:
            self.solved_at = env_steps
        self.next += self.every
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.env.close()


def run_robometa(
    seed: int, max_steps: int, eval_every: int, config: Path
) -> tuple[dict[str, Any], Evaluator]:
    cfg = load_config(config, ["logging.progress=false"], seed=seed)
    agent = DQN(cfg)
    ev = Evaluator(eval_every)
    wall = cpu = 0.0
    try:
        while agent.env_steps < max_steps:
            w0, c0 = time.perf_counter(), time.process_time()
            agent.iterate()
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            if ev.due(agent.env_steps):
                ev(agent.env_steps, greedy_act_fn(agent.net, agent.net.params()))
        steps = agent.env_steps
    finally:
        agent.close()
        ev.close()
    return {"env_steps": steps, "train_wall_s": wall, "train_cpu_s": cpu}, ev


def run_sb3(seed: int, max_steps: int, eval_every: int) -> tuple[dict[str, Any], Evaluator]:
    import gymnasium as gym
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.callbacks import BaseCallback

    ev = Evaluator(eval_every)

    class Clock(BaseCallback):
        """Evaluates on schedule with the clocks paused; stops at ``max_steps``."""

        def _on_training_start(self) -> None:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def _on_step(self) -> bool:
            if ev.due(self.num_timesteps):
                w, c = time.perf_counter(), time.process_time()
                ev(self.num_timesteps, lambda o: int(self.model.predict(o, deterministic=True)[0]))
                self.wall += time.perf_counter() - w
                self.cpu += time.process_time() - c
            return self.num_timesteps < max_steps

        def _on_training_end(self) -> None:
            self.wall = time.perf_counter() - self.wall
            self.cpu = time.process_time() - self.cpu

    env = gym.make(ENV_ID)
    model = SB3DQN("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SB3_HYPERPARAMETERS)
    clock = Clock()
    try:
        model.learn(total_timesteps=ZOO_TIMESTEPS, callback=clock)
    finally:
        env.close()
        ev.close()
    return {
        "env_steps": int(model.num_timesteps),
        "train_wall_s": clock.wall,
        "train_cpu_s": clock.cpu,
    }, ev


def summarize(runs: list[dict[str, Any]], max_steps: int) -> dict[str, Any]:
    solved = [r["solved_at"] for r in runs]
    counted = [s if s is not None else max_steps for s in solved]
    per10k = [r["train_wall_s"] / r["env_steps"] * 1e4 for r in runs]
    cpu10k = [r["train_cpu_s"] / r["env_steps"] * 1e4 for r in runs]
    return {
        "steps_to_solve_mean": statistics.fmean(counted),
        "seeds_solved": sum(s is not None for s in solved),
        "seeds_unsolved": [r["seed"] for r in runs if r["solved_at"] is None],
        "wall_s_per_10k_median": statistics.median(per10k),
        "cpu_s_per_10k_median": statistics.median(cpu10k),
        "final_return_mean": statistics.fmean(r["final_return"] for r in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--max-steps", type=int, default=30_000, help="env steps per run")
    parser.add_argument("--eval-every", type=int, default=2000, help="env steps between evals")
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "cartpole_dqn.yaml", help="robometa"
    )
    args = parser.parse_args(argv)
    try:
        import stable_baselines3
    except ImportError:
        print("needs stable-baselines3: pip install 'robometa[bench]'", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # robometa's train() does this; the same for SB3

    results: dict[str, list[dict[str, Any]]] = {"robometa": [], "sb3": []}
    for seed in range(args.seeds):
        for name in ("robometa", "sb3"):  # alternate: both see the same machine load
            if name == "robometa":
                timing, ev = run_robometa(seed, args.max_steps, args.eval_every, args.config)
            else:
                timing, ev = run_sb3(seed, args.max_steps, args.eval_every)
            run = {
                "seed": seed,
                **timing,
                "solved_at": ev.solved_at,
                "final_return": ev.curve[-1][1] if ev.curve else None,
                "eval_s": ev.seconds,
                "curve": ev.curve,
            }
            results[name].append(run)
            print(
                f"  {name:8} seed {seed}: solved at {ev.solved_at}, "
                f"{run['train_wall_s']:.1f} s training, final return {run['final_return']}",
                flush=True,
            )

    ours = summarize(results["robometa"], args.max_steps)
    theirs = summarize(results["sb3"], args.max_steps)
    norm_steps = 2000  # DQN.__init__ -> fit_normalization(..., 2000, ...)
    ours["normalization_env_steps"] = norm_steps
    ours["steps_to_solve_incl_setup"] = ours["steps_to_solve_mean"] + norm_steps
    ratio_steps = ours["steps_to_solve_mean"] / theirs["steps_to_solve_mean"]
    ratio_wall = ours["wall_s_per_10k_median"] / theirs["wall_s_per_10k_median"]
    report = {
        "benchmark": "dqn_vs_sb3",
        "env": ENV_ID,
        "task": "nominal",
        "seeds": list(range(args.seeds)),
        "max_steps": args.max_steps,
        "solved": {
            "return": SOLVED_RETURN,
            "episodes": EVAL_EPISODES,
            "eval_every": args.eval_every,
            "definition": "first eval point with greedy mean return >= 195 over 5 episodes; "
            "unsolved seeds count as max_steps",
        },
        "robometa": {"config": str(args.config.relative_to(REPO)), **ours},
        "sb3": {
            "version": stable_baselines3.__version__,
            "hyperparameters": SB3_HYPERPARAMETERS,
            "zoo_total_timesteps": ZOO_TIMESTEPS,
            **theirs,
        },
        "ratio": {"env_steps_to_solve": ratio_steps, "wall_s_per_10k": ratio_wall},
        "targets": {"env_steps_to_solve": "ratio <= 1", "wall_s_per_10k": "ratio <= 1"},
        "pass": {
            "env_steps_to_solve": ratio_steps <= 1.0,
            "env_steps_to_solve_incl_setup": ours["steps_to_solve_incl_setup"]
            <= theirs["steps_to_solve_mean"],
            "wall_s_per_10k": ratio_wall <= 1.0,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print()
    print(f"{'':28} {'robometa':>10} {'SB3':>10} {'ratio':>7}  target")
    print(
        f"{'env steps to solve (mean)':28} {ours['steps_to_solve_mean']:10.0f} "
        f"{theirs['steps_to_solve_mean']:10.0f} {ratio_steps:7.2f}  <= 1 "
        f"{'PASS' if report['pass']['env_steps_to_solve'] else 'FAIL'}"
    )
    print(
        f"{'seeds solved':28} {ours['seeds_solved']:>10} {theirs['seeds_solved']:>10}"
        f" {'':7}  of {args.seeds} within {args.max_steps} steps"
    )
    print(
        f"{'wall s per 10k steps (med)':28} {ours['wall_s_per_10k_median']:10.2f} "
        f"{theirs['wall_s_per_10k_median']:10.2f} {ratio_wall:7.2f}  <= 1 "
        f"{'PASS' if report['pass']['wall_s_per_10k'] else 'FAIL'}"
    )
    print(
        f"{'CPU s per 10k steps (med)':28} {ours['cpu_s_per_10k_median']:10.2f} "
        f"{theirs['cpu_s_per_10k_median']:10.2f} "
        f"{ours['cpu_s_per_10k_median'] / theirs['cpu_s_per_10k_median']:7.2f}"
    )
    print(
        f"{'final greedy return (mean)':28} {ours['final_return_mean']:10.1f} "
        f"{theirs['final_return_mean']:10.1f}"
    )
    print(f"(robometa also used {norm_steps} random env steps to fit its input normalization)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
