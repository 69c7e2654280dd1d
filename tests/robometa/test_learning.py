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
def test_dqn_solves_nominal_cartpole(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "cartpole_dqn.yaml", ["logging.progress=false"])
    assert cfg.dqn.total_steps <= 30_000 and cfg.env.tasks == "nominal"
    policy = train(cfg, tmp_path / "run")
    env = make_env(cfg.env.id)
    try:
        nominal = env.unwrapped.dynamics_space.nominal()
        act = greedy_act_fn(policy.net, policy.params)
        returns = [episode_return(env, act, nominal, seed=50_000 + i) for i in range(10)]
    finally:
        env.close()
    # policy.pt is the best policy seen by model selection on the training task (5 episodes
    # every 2000 steps); these are 10 further episodes from other start states.
    assert np.mean(returns) >= SOLVED, returns
