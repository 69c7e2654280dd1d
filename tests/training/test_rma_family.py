"""The ``rma`` family (robometa.methods.rma): the teacher's privileged input and the deployed
policy's unprivileged one, the history window (padding, mask, online updates, reset), the
empty window's own prior (the MSE-best constant, the same in torch and numpy), the student's
explicit exploration, the config rules, a short run that trains, resumes exactly, saves, loads
and evaluates; the slow tests train the shipped CartPole config and check that the adaptation
module tracks the teacher on held-out (test-split) robots better than the prior, and that
adapting beats not adapting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import robometa.algorithms as algorithms
from robometa.adaptation import Batch
from robometa.config import load_config
from robometa.evaluate import TaskSet, evaluate_method, with_support
from robometa.methods.rma import (
    HistoryActor,
    RegressionBuffer,
    RMALearner,
    RMAMethod,
    RMAQNetwork,
    history_context,
    ordered_window,
    rma_q,
    teacher_context,
    untrained_policy,
    window_row,
    window_width,
)
from robometa.policy import Policy
from robometa.rollout import collect, make_env
from robometa.train import SELECTION_SEED, MetricsLog, train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "cartpole_rma.yaml"


def transitions(n: int, seed: int = 0) -> list[tuple[np.ndarray, int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.0, 0.05, (n, 4)).astype(np.float32)
    nxt = (obs + rng.normal(0.0, 0.02, (n, 4))).astype(np.float32)
    return [(obs[i], int(rng.integers(3)), nxt[i]) for i in range(n)]


def rows_of(steps: list) -> list[np.ndarray]:
    return [window_row(o, a, o2, 3) for o, a, o2 in steps]


# ---------------------------------------------------------------------------- the network


def test_the_teacher_reads_the_dynamics_part_and_the_deployed_policy_only_the_observation() -> None:
    policy = untrained_policy(seed=1)
    net = policy.net
    assert isinstance(net, RMAQNetwork) and net.spec.extrinsics_dim == 10
    obs = torch.zeros(5, 4)
    e = torch.linspace(-1, 1, 10).expand(5, 10)
    with torch.no_grad():
        q_teacher = net.teacher_q(torch.cat([obs, e], -1))
        q_other = net.teacher_q(torch.cat([obs, -e], -1))
        expected = rma_q(net, policy.params, obs, net.teacher_z(e))
    assert torch.allclose(q_teacher, expected, atol=1e-6)
    assert (q_teacher - q_other).abs().max() > 1e-3  # the teacher reads e
    with pytest.raises(RuntimeError):  # the deployed policy has no input for e
        net(torch.cat([obs, e], -1), False)
    method = RMALearner.evaluation_method(policy, "rma", 0.3)
    assert not method.privileged and not policy.privileged
    env = make_env(policy.env_id)  # the unprivileged env the evaluation builds
    assert env.observation_space.shape == (4,)
    assert method.initial_actor()(env.reset(seed=0)[0]) in (0, 1, 2)
    env.close()


def test_padding_and_masked_rows_do_not_change_the_extrinsics() -> None:
    policy = untrained_policy(seed=2, history=8)
    net, params = policy.net, policy.params
    rows = rows_of(transitions(3, seed=1))
    window, mask = ordered_window(rows, 8, window_width(net.spec))
    assert mask.tolist() == [0.0] * 5 + [1.0] * 3
    assert torch.equal(window[5:], torch.from_numpy(np.stack(rows)))
    garbage = window.clone()
    garbage[:5] = 100.0 * torch.randn(5, window.shape[1])
    exact = torch.from_numpy(np.stack(rows))
    with torch.no_grad():
        z = history_context(net, params, window, mask)
        assert torch.allclose(z, history_context(net, params, garbage, mask), atol=1e-6)
        assert torch.allclose(z, history_context(net, params, exact, torch.ones(3)), atol=1e-6)
        empty = history_context(net, params, *ordered_window([], 8, window.shape[1]))
        # a batch of an empty and a non-empty window: each row its own path
        both = history_context(
            net,
            params,
            torch.stack([torch.zeros_like(window), window]),
            torch.stack([0 * mask, mask]),
        )
    # the empty window's own prior, not the intercept every non-empty window shares
    assert torch.equal(empty, params["history_prior"])
    assert (empty - params["history_out.bias"]).abs().max() > 1e-3
    assert torch.equal(both[0], empty) and torch.allclose(both[1], z, atol=1e-6)
    assert (z - empty).abs().max() > 1e-3


def test_the_history_actor_updates_every_step_and_reset_clears_it() -> None:
    policy = untrained_policy(seed=3, history=4)
    net, params = policy.net, policy.params
    actor = HistoryActor(net, params)
    steps = transitions(7, seed=2)
    probe = torch.from_numpy(np.stack([o for o, _, _ in steps]))
    seen, last = [], actor.z.copy()
    for o, a, o2 in steps:
        actor.observe(o, a, 1.0, o2, False)
        seen.append(window_row(o, a, o2, 3))
        window, mask = ordered_window(seen, 4, window_width(net.spec))
        with torch.no_grad():
            z = history_context(net, params, window, mask)
            greedy = rma_q(net, params, probe, z).argmax(1).tolist()
        assert np.abs(actor.z - z.numpy()).max() <= 1e-5
        assert np.abs(actor.z - last).max() > 1e-4  # a new estimate every step
        assert [actor(o) for o in probe.numpy()] == greedy
        last = actor.z.copy()
    assert torch.equal(actor.window[0][0], torch.from_numpy(seen[-4]))  # oldest of the last 4
    actor.reset()
    prior = params["history_prior"].numpy()
    assert np.array_equal(actor.z, prior)
    fixed = HistoryActor(net, params, online=False)
    fixed.observe(*steps[0][:2], 1.0, steps[0][2], False)
    assert np.array_equal(fixed.z, prior)
    # the policy's "no adaptation" Q (z=None) is that prior's too
    with torch.no_grad():
        q_none = net(probe, False)[0]
        q_prior = rma_q(net, params, probe, params["history_prior"])
    assert torch.allclose(q_none, q_prior) and np.allclose(
        fixed.q_values(probe[0].numpy()), q_none[0].numpy(), atol=1e-5
    )


def test_adapted_actors_start_from_the_last_support_window_and_are_independent() -> None:
    policy = untrained_policy(seed=4, history=4)
    method = RMAMethod("rma", policy)
    steps = transitions(10, seed=3)
    support = Batch(
        torch.from_numpy(np.stack([o for o, _, _ in steps])),
        torch.tensor([a for _, a, _ in steps]),
        torch.ones(10),
        torch.from_numpy(np.stack([o2 for _, _, o2 in steps])),
        torch.zeros(10),
    )
    none, first, second = method.adapted_actors(support, [0, 1, 1])
    bias = policy.params["history_prior"].numpy()
    assert np.array_equal(none.z, bias)
    window, mask = ordered_window(rows_of(steps), 4, window_width(policy.net.spec))
    with torch.no_grad():
        z = history_context(policy.net, policy.params, window, mask).numpy()
    assert np.abs(first.z - z).max() <= 1e-5 and first is not second
    first.observe(*steps[0][:2], 1.0, steps[0][2], False)
    assert np.abs(second.z - z).max() <= 1e-5 and np.abs(first.z - z).max() > 1e-4
    none.observe(*steps[0][:2], 1.0, steps[0][2], False)
    assert np.array_equal(none.z, bias)  # 0 steps: no adaptation, ever
    assert with_support(method, 10).support_size == 10


# ---------------------------------------------------------------------------- registry, config


def test_the_registry_names_the_family_and_its_kind() -> None:
    spec = algorithms.get("rma")
    assert (spec.family, spec.adapts, spec.bundle_kind, spec.privileged) == (
        "rma",
        True,
        "history",
        False,
    )
    assert spec.load() is RMALearner and RMALearner.network_class is RMAQNetwork


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("network.context_dim=0", r"'network.context_dim': rma compresses .* got 0"),
        ("memory.teacher_fraction=0.0", r"'memory.teacher_fraction': .* got 0.0"),
        ("memory.teacher_fraction=1.0", r"'memory.teacher_fraction': .* got 1.0"),
        ("dqn.learning_starts=40000", r"'dqn.learning_starts': .* first 35000 env steps"),
        (
            "dqn.exploration_fraction=0.8",
            r"'dqn.exploration_fraction' is 0.8, more than config key "
            r"'memory.teacher_fraction' \(0.7\).* in .*cartpole_rma.yaml",
        ),
    ],
)
def test_config_rules_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(CONFIG, [override])


@pytest.mark.parametrize("name", ["cartpole_rma", "diffdrive_rma"])
def test_the_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.algorithm == "rma" and cfg.network.context_dim == 8 and cfg.memory.history == 16


# ---------------------------------------------------------------------------- a short run

SHORT = [
    "logging.progress=false",
    "logging.eval_every=0",
    "logging.tensorboard=false",
    "logging.checkpoint_every=400",
    "dqn.learning_starts=100",
    "dqn.buffer_size=2000",
    "memory.teacher_fraction=0.5",
]


def test_the_empty_windows_prior_is_the_mse_best_constant_and_the_student_acts_at_epsilon_end() -> (
    None
):
    cfg = load_config(CONFIG, SHORT, steps=1200)
    learner = RMALearner(cfg)
    net, spec = learner.net, learner.net.spec
    rng = np.random.default_rng(0)
    for i in range(300):  # every 10th pair is a first step on a robot: an empty window
        empty = i % 10 == 0
        mask = np.zeros(spec.history, np.float32) if empty else np.ones(spec.history, np.float32)
        window = np.zeros((spec.history, window_width(spec)), np.float32)
        if not empty:
            window[:, :4] = rng.normal(0.0, 0.1, (spec.history, 4))
            window[np.arange(spec.history), 4 + rng.integers(3, size=spec.history)] = 1.0
        learner.regression.add(window, mask, rng.uniform(-1.0, 1.0, spec.extrinsics_dim))
    reg = learner.regression
    assert reg.empty[: len(reg)].sum() == 30
    learner.fit_prior()
    e_empty = torch.from_numpy(reg.extrinsics[:300][reg.empty[:300]])
    with torch.no_grad():
        mu = net.teacher_z(e_empty)
        prior = net.history_prior.detach().clone()
        assert torch.allclose(prior, mu.mean(0), atol=1e-6)

        def mse(c: torch.Tensor) -> float:
            return float(((c - mu) ** 2).mean())

        # the MSE-best constant of the empty-window pairs: better than the shared intercept
        # and than any nudge of itself
        assert mse(prior) < mse(net.history_out.bias)
        nudges = 0.05 * torch.randn(
            20, spec.context_dim, generator=torch.Generator().manual_seed(0)
        )
        assert all(mse(prior) < mse(prior + d) for d in nudges)
        empty_z = history_context(
            net, dict(net.named_parameters()), *ordered_window([], spec.history, window_width(spec))
        )
    assert torch.equal(empty_z, prior)
    # the student's Adam steps never move the prior; the ring's empties survive a reload
    assert all(
        p is not net.history_prior
        for g in learner.student_optimizer.param_groups
        for p in g["params"]
    )
    learner._student_step()
    assert torch.equal(net.history_prior, prior)
    restored = RegressionBuffer(
        len(reg.windows), spec.history, window_width(spec), spec.extrinsics_dim
    )
    restored.load_state_dict(reg.state_dict())
    assert np.array_equal(restored.empty, reg.empty)
    # the student acts at the end of the schedule, explicitly: past the teacher's phase
    learner.env_steps = learner.teacher_steps
    assert learner.student_phase and learner.epsilon() == cfg.dqn.epsilon_end
    learner.env_steps = 0
    assert learner.epsilon() == cfg.dqn.epsilon_start
    learner.close()


def test_model_selection_ranks_student_phase_policies_only(tmp_path: Path) -> None:
    # a teacher-phase checkpoint acts with an untrained adaptation module: it must not compete
    # (it did: a CartPole seed kept its 20k-step policy out of 50k, the module never trained)
    cfg = load_config(
        CONFIG, [*SHORT, "logging.eval_every=200", "logging.eval_tasks=2"], steps=1200
    )
    policy = train(cfg, tmp_path / "run")
    rows = MetricsLog.read(tmp_path / "run" / "selection.csv")
    assert [int(r["env_steps"]) for r in rows] == [800, 1000, 1200]
    assert float(rows[-1]["best"]) == max(float(r["train_task_return"]) for r in rows)
    assert policy.adapt_steps == 1


def _tensors(policy: Policy) -> dict[str, torch.Tensor]:
    return dict(policy.params)


def test_a_short_run_trains_resumes_exactly_saves_loads_and_evaluates(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, SHORT, steps=1200)
    policy = train(cfg, tmp_path / "run")
    assert policy.adapt_steps == 1 and policy.lrs == {} and not policy.privileged
    # the teacher phase moved the Q-network, the student phase the adaptation module only
    start = RMALearner(cfg)
    assert (start.net.body[0].weight - policy.params["body.0.weight"]).abs().max() > 1e-4
    assert (start.net.history_out.weight - policy.params["history_out.weight"]).abs().max() > 1e-4
    start.close()
    # killed in the student phase (stop_after, past the checkpoint at 800), then resumed
    train(cfg, tmp_path / "resumed", stop_after=1000)
    resumed = train(None, tmp_path / "resumed", resume=True)  # type: ignore[arg-type]
    assert all(torch.equal(resumed.params[k], v) for k, v in policy.params.items())
    loaded = Policy.load(tmp_path / "run")
    assert type(loaded.net) is RMAQNetwork and loaded.net.spec == policy.net.spec
    assert all(torch.equal(loaded.params[k], v) for k, v in policy.params.items())
    method = RMALearner.evaluation_method(loaded, "rma", 0.3)
    env = make_env(loaded.env_id)
    tasks = env.unwrapped.sample_tasks(2, seed=0, split="test")
    support = collect(env, method.initial_actor(), tasks[0], 20, 0.3, np.random.default_rng(0))
    env.close()
    assert len(support) == 20
    res = evaluate_method(method, [TaskSet("t", tasks)], [0, 1], episodes=1)
    assert np.array(res["t"]).shape == (2, 2) and np.all(np.array(res["t"]) > 0)
    with pytest.raises(ValueError, match="no gradient fine-tuning"):
        RMALearner.evaluation_method(loaded, "x", 0.3, lrs={"body.0.weight": torch.tensor(1.0)})


# ---------------------------------------------------------------------------- slow: learning

#: pinned settings of the slow tests: the shipped CartPole config at its full budget (about
#: 40 s of training per seed on an idle core here), its final policy (no model selection)
PINNED = ["logging.progress=false", "logging.eval_every=0", "logging.tensorboard=false"]
#: two training seeds, pooled: one seed's margins move with float rounding (seed 0 passed
#: one CPU's thresholds and missed them on another) and differ from seed to seed (measured
#: here over seeds 0-3, final policies: train-range tracking error / prior 0.35, 0.68, 0.44,
#: 0.35; test-range 0.97, 0.77, 0.92, 0.72; return gain over the empty window on 30 unseen
#: train-range robots +69, +8, +29, +145)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> list[Policy]:
    root = tmp_path_factory.mktemp("rma")
    return [train(load_config(CONFIG, PINNED, seed=s), root / f"seed{s}") for s in SEEDS]


def _windows(policy: Policy, tasks: list, seed: int) -> tuple[torch.Tensor, ...]:
    """Windows the online policy sees after 50 steps on each task, and each task's e."""
    env = make_env(policy.env_id, privileged=True)
    base = policy.net.spec.obs_dim
    out_w, out_m, out_e = [], [], []
    for i, task in enumerate(tasks):
        actor = HistoryActor(policy.net, policy.params)
        env.unwrapped.set_task(task)
        obs, _ = env.reset(seed=seed + i)
        for _ in range(50):
            action = actor(obs[:base])
            nxt, _, term, trunc, _ = env.step(action)
            actor.observe(obs[:base], action, 0.0, nxt[:base], term)
            obs = env.reset(seed=seed + 100 + i)[0] if term or trunc else nxt
        window, mask = actor.window
        out_w.append(window)
        out_m.append(mask)
        out_e.append(torch.from_numpy(obs[base:]))
    env.close()
    return torch.stack(out_w), torch.stack(out_m), torch.stack(out_e)


#: robots the run never met: training draws each episode's robot from a fresh random seed
#: (robometa.rollout.seed_from) and model selection uses SELECTION_SEED
UNSEEN_SEED = 202


def _tracking(policy: Policy, split: str) -> tuple[float, float, float]:
    """MSE of phi(window) to mu(e) on 30 unseen robots of ``split``, of the empty window's
    prior, and of phi against the other robots' mu(e) (a fixed shuffle)."""
    env = make_env(policy.env_id)
    tasks = env.unwrapped.dynamics_space.sample(30, seed=UNSEEN_SEED, split=split)
    env.close()
    windows, masks, e = _windows(policy, tasks, seed=7)
    with torch.no_grad():
        target = teacher_context(policy.net, policy.params, e)
        z = history_context(policy.net, policy.params, windows, masks)
    error = float(((z - target) ** 2).mean())
    prior = float(((policy.params["history_prior"] - target) ** 2).mean())
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    shuffled = float(((z - target[order]) ** 2).mean())
    return error, prior, shuffled


def _pooled_tracking(policies: list[Policy], split: str) -> tuple[float, float, float]:
    """:func:`_tracking`'s three MSEs averaged over the training seeds."""
    return tuple(np.mean([_tracking(p, split) for p in policies], axis=0))  # type: ignore[return-value]


def _gain(policy: Policy) -> tuple[float, float]:
    """Mean greedy return on 30 unseen train-range robots with the empty window's prior held
    (0 steps) and with the online history warmed on a 200-transition support (1 step)."""
    env = make_env(policy.env_id)
    tasks = env.unwrapped.sample_tasks(30, seed=UNSEEN_SEED, split="train")
    env.close()
    method = RMALearner.evaluation_method(policy, "rma", 0.3)
    res = evaluate_method(method, [TaskSet("unseen", tasks)], [0, 1], episodes=1)
    before, after = np.mean(res["unseen"], axis=0)
    return float(before), float(after)


@pytest.mark.slow
def test_the_adaptation_module_tracks_the_teachers_extrinsics_on_held_out_robots(
    trained: list[Policy],
) -> None:
    # held out: never trained on nor selected with; first from the training ranges, where the
    # prior is the MSE-best constant, then from the test split's wider ranges, where the
    # teacher's extrinsics are extrapolated too and the margin is smaller (pooled over SEEDS,
    # measured: 0.066 against a prior of 0.153 and 0.270 shuffled; test range 0.43 against
    # 0.50 and 0.60)
    assert UNSEEN_SEED != SELECTION_SEED
    error, prior, shuffled = _pooled_tracking(trained, "train")
    assert error < 0.6 * prior and error < 0.6 * shuffled, (error, prior, shuffled)
    error, prior, shuffled = _pooled_tracking(trained, "test")
    assert error < prior and error < 0.9 * shuffled, (error, prior, shuffled)


@pytest.mark.slow
def test_the_online_history_adapts_better_than_the_empty_window_on_unseen_robots(
    trained: list[Policy],
) -> None:
    gains = [_gain(p) for p in trained]
    before, after = np.mean(gains, axis=0)
    # measured: 94.9 -> 164.1 (seed 0) and 98.3 -> 106.6 (seed 1), +38.7 pooled
    assert after > before + 15, gains
