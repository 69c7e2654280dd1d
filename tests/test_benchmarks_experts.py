"""benchmarks/experts.py: an expert's config trains on exactly the held-out robot it is for."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _experts():
    spec = importlib.util.spec_from_file_location(
        "experts_bench", ROOT / "benchmarks" / "experts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_expert_config_is_the_robot_alone() -> None:
    from robometa import task_suites
    from robometa.config import load_config
    from robometa.rollout import make_env, train_tasks

    experts = _experts()
    env_id = experts.family_env_id("cartpole")
    env = make_env(env_id)
    path = task_suites.suite_dir("heldout", env_id) / "id.yaml"
    task = task_suites.load_task_file(path, env.unwrapped.dynamics_space, env_id)[3]
    env.close()
    cfg = load_config(ROOT / "configs" / "cartpole_dr.yaml", experts.expert_overrides(dict(task)))
    assert cfg.env.tasks == "nominal"
    robot_env = make_env(env_id, cfg.env.dynamics)
    space = robot_env.unwrapped.dynamics_space
    robot_env.close()
    drawn = train_tasks(space, cfg.env.tasks, 3, 0)
    for t in drawn:  # every training episode is that robot, every parameter
        assert dict(t) == pytest.approx(dict(task))
    with pytest.raises(SystemExit, match="unknown family 'cartpol'"):
        experts.family_env_id("cartpol")
