"""Learning: DQN solves the nominal cart-pole within a small budget (slow; still run in CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robometa.config import load_config
from robometa.rollout import episode_return, greedy_act_fn, make_env
from robometa.train import train

REPO = Path(__file__).resolve().parents[2]
SOLVED = 195.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dqn_solves_nominal_cartpole(tmp_path: Path, seed: int) -> None:
    # eval_every=0: the final policy itself, not the best one model selection would keep.
    cfg = load_config(
        REPO / "configs" / "cartpole_dqn.yaml",
        ["logging.progress=false", "logging.eval_every=0"],
        seed=seed,
    )
    assert cfg.dqn.total_steps <= 30_000 and cfg.env.tasks == "nominal"
    policy = train(cfg, tmp_path / "run")
    env = make_env(cfg.env.id)
    try:
        nominal = env.unwrapped.dynamics_space.nominal()
        act = greedy_act_fn(policy.net, policy.params)
        returns = [episode_return(env, act, nominal, seed=50_000 + i) for i in range(10)]
    finally:
        env.close()
    # 10 episodes from start states training never used; 200 is the most an episode gives.
    assert np.mean(returns) >= SOLVED, returns
