"""The scripted reference controllers (robometa.reference) and their benchmark's smoke run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from robometa.envs.cartpole import CartPoleEnv

from robometa.reference import FAMILY_IDS, cartpole_lqr_gain, reference_controller
from robometa.rollout import episode_return, make_env

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_controllers.py"

#: family -> (episodes, least reference return, most random return, least margin over random)
EXPECTED = {
    "cartpole": (3, 200.0, 60.0, 140.0),  # every episode held for all 200 steps
    "reacher": (3, -20.0, -50.0, 40.0),  # returns are negative distances (random about -80)
    "armreach": (3, 60.0, 0.0, 60.0),  # about +80 against a random -25
    "diffdrive": (3, 15.0, 5.0, 15.0),  # the goal (bonus 10) reached 1-3 m away
}


def _returns(env, act, episodes: int, seed: int = 777) -> list[float]:
    task = env.unwrapped.dynamics_space.nominal()
    return [episode_return(env, act, task, seed + i) for i in range(episodes)]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_reference_controller_beats_random_on_the_nominal_robot(family: str) -> None:
    episodes, least, most_random, margin = EXPECTED[family]
    env = make_env(FAMILY_IDS[family])
    try:
        act = reference_controller(FAMILY_IDS[family], env)
        n = int(env.action_space.n)
        obs, _ = env.reset(seed=0)
        for _ in range(20):  # valid actions, as plain ints
            a = act(obs)
            assert type(a) is int and 0 <= a < n
            obs, *_ = env.step(a)
        ref = _returns(env, act, episodes)
        rng = np.random.default_rng(0)
        rand = _returns(env, lambda obs: int(rng.integers(n)), episodes)
    finally:
        env.close()
    assert min(ref) >= least, ref
    assert np.mean(rand) <= most_random, rand
    assert np.mean(ref) - np.mean(rand) >= margin, (ref, rand)


def test_family_names_and_env_ids_give_the_same_controller() -> None:
    env = make_env("robometa/DiffDrive-v0")
    try:
        a, b = reference_controller("diffdrive"), reference_controller("robometa/DiffDrive-v0", env)
        obs, _ = env.reset(seed=3)
        for _ in range(10):
            assert a(obs) == b(obs)
            obs, *_ = env.step(a(obs))
    finally:
        env.close()


def test_cartpole_lqr_holds_the_pole_far_past_the_episode_length() -> None:
    env = CartPoleEnv(max_episode_steps=1000)
    try:
        act = reference_controller("cartpole", env)
        for seed in range(2):
            obs, _ = env.reset(seed=seed)
            steps, done, drift = 0, False, 0.0
            while not done:
                obs, _, terminated, truncated, _ = env.step(act(obs))
                steps, done = steps + 1, terminated or truncated
                drift = max(drift, abs(float(obs[0])))
            assert (steps, terminated) == (1000, False)
            assert drift < 0.5  # the cart stays near the middle of its +-2.4 m rail
    finally:
        env.close()


def test_cartpole_lqr_is_stabilizing() -> None:
    k, ad, bd = cartpole_lqr_gain()
    closed = ad - np.outer(bd, k)
    assert np.max(np.abs(np.linalg.eigvals(closed))) < 1.0
    assert k[2] < 0  # a pole leaning toward +x (theta > 0) pushes the cart toward +x


def test_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'robometa/Hexapod-v0'.*cartpole.*diffdrive"):
        reference_controller("robometa/Hexapod-v0", None)


def test_env_of_another_family_is_refused() -> None:
    env = make_env("robometa/CartPole-v0")
    try:
        with pytest.raises(ValueError, match="ReacherEnv"):
            reference_controller("reacher", env)
    finally:
        env.close()


def test_benchmark_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("reference_controllers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "reference.json"
    argv = [
        "--out",
        str(out),
        "--families",
        "cartpole",
        "--steps",
        "300",
        "--episodes",
        "2",
        "--seeds",
        "0",
    ]
    assert bench.main([*argv, "--runs-dir", str(tmp_path / "runs")]) == 0
    report = json.loads(out.read_text())
    fam = report["families"]["cartpole"]
    assert fam["overrides"] == ["env.tasks=nominal"] and fam["config"] == "configs/cartpole_dr.yaml"
    assert fam["train_steps"] == 300
    assert fam["reference"]["returns"] == [200.0, 200.0]
    for side in ("reference", "random", "dqn"):
        lo, hi = fam[side]["ci95"]
        assert lo <= fam[side]["mean"] <= hi and len(fam[side]["returns"]) == 2
    ref, rand, dqn = (fam[s]["mean"] for s in ("reference", "random", "dqn"))
    assert fam["normalized"]["score"] == pytest.approx((dqn - rand) / (ref - rand))
    assert fam["ratio_plain"] == pytest.approx(dqn / ref)
    assert fam["pass"] == (fam["normalized"]["score"] >= 0.9)
    (run,) = fam["dqn"]["runs"]
    assert run["status"] == "absent" and Path(run["run"]).is_dir()
    assert "| cartpole | 300 |" in report["table"] and report["table"] in capsys.readouterr().out
    # a second call reuses the finished run
    assert bench.main([*argv, "--runs-dir", str(tmp_path / "runs")]) == 0
    again = json.loads(out.read_text())["families"]["cartpole"]
    assert again["dqn"]["runs"][0]["status"] == "finished"
    assert again["dqn"]["returns"] == fam["dqn"]["returns"]
