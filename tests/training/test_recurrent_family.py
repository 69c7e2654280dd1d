"""The ``recurrent`` family (robometa.methods.recurrent): the GRU state's properties, the
sequence replay with burn-in, training, exact resume, evaluation and save/load; the slow test
trains it briefly at pinned settings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import robometa.algorithms as algorithms
from robometa.adaptation import Batch
from robometa.config import load_config
from robometa.evaluate import TaskSet, evaluate_method, with_support
from robometa.methods.recurrent import (
    RecurrentActor,
    RecurrentLearner,
    RecurrentMethod,
    RecurrentQNetwork,
    SequenceLoss,
    advance,
    recurrent_q,
    sequence_loss,
    unroll,
    untrained_policy,
    warm_state,
)
from robometa.networks import q_values
from robometa.policy import Policy
from robometa.rollout import collect, episode_return, make_env
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "cartpole_recurrent.yaml"

#: a tiny run: two envs, short sequences, learning from step 200
TINY = [
    "logging.progress=false",
    "logging.eval_every=0",
    "logging.checkpoint_every=600",
    "logging.log_every=300",
    "env.num_envs=2",
    "network.hidden=[16, 16]",
    "memory.hidden_size=8",
    "memory.sequence_length=8",
    "memory.burn_in=3",
    "adaptation.support_size=20",
    "dqn.batch_size=4",
    "dqn.learning_starts=200",
]


def transitions(n: int, seed: int = 0, obs_dim: int = 4, n_actions: int = 3) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = 0.1 * torch.randn(n, obs_dim, generator=gen)
    return Batch(
        obs,
        torch.randint(0, n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + 0.05 * torch.randn(n, obs_dim, generator=gen),
        (torch.arange(n) % 11 == 10).float(),
    )


def rows(batch: Batch) -> list[tuple]:
    return list(zip(*(f.numpy() for f in batch), strict=True))


def test_reset_clears_the_state_and_the_zero_state_is_the_memoryless_q() -> None:
    policy = untrained_policy(seed=1)
    net, params = policy.net, policy.params
    actor = RecurrentActor(net, params)
    for row in rows(transitions(30)):
        actor.observe(*row)
    assert np.abs(actor.hidden).max() > 0.05
    actor.reset()
    assert np.array_equal(actor.hidden, np.zeros(8, np.float32))
    obs = transitions(9, seed=2).obs
    assert torch.equal(recurrent_q(net, params, obs, None), q_values(net, params, obs))
    assert [actor(o.numpy()) for o in obs] == q_values(net, params, obs).argmax(1).tolist()


def test_the_state_depends_on_the_history_and_its_order() -> None:
    policy = untrained_policy(seed=1)
    net, params = policy.net, policy.params
    batch = transitions(40)
    reversed_batch = Batch(*(f.flip(0) for f in batch))
    h, h_reversed = (warm_state(net, params, b) for b in (batch, reversed_batch))
    assert float((h - h_reversed).abs().max()) > 1e-2  # a GRU, not a mean: order matters
    flipped = Batch(batch.obs, (batch.action + 1) % 3, *batch[2:])
    assert float((warm_state(net, params, flipped) - h).abs().max()) > 1e-2
    obs = transitions(64, seed=3).obs
    greedy = {
        tuple(recurrent_q(net, params, obs, state).argmax(1).tolist())
        for state in (None, h, h_reversed)
    }
    assert len(greedy) == 3  # the state changes what the policy does


def test_the_numpy_actor_follows_the_torch_state_and_actions() -> None:
    policy = untrained_policy(seed=4)
    net, params = policy.net, policy.params
    batch = transitions(60, seed=5)
    actor = RecurrentActor(net, params)
    h = torch.zeros(1, 8)
    with torch.no_grad():
        for t, row in enumerate(rows(batch)):
            q = recurrent_q(net, params, batch.obs[t : t + 1], h[0])
            assert actor(batch.obs[t].numpy()) == int(q.argmax())
            actor.observe(*row)
            h = advance(net, params, h, Batch(*(f[t : t + 1] for f in batch)))
            assert np.abs(actor.hidden - h[0].numpy()).max() < 1e-5


def test_unroll_gives_the_state_before_every_step_and_burn_in_cuts_the_gradient() -> None:
    policy = untrained_policy(seed=2)
    net, params = policy.net, policy.params
    seq = Batch(*(torch.stack([f, f.roll(1, 0)]) for f in transitions(12, seed=6)))
    h0 = torch.zeros(2, 8)
    hs = unroll(net, params, h0, seq)
    assert hs.shape == (2, 13, 8) and torch.equal(hs[:, 0], h0)
    h = h0
    for t in range(12):
        h = advance(net, params, h, Batch(*(f[:, t] for f in seq)))
        assert torch.allclose(hs[:, t + 1], h, atol=1e-6)
    mask = torch.ones(2, 12)
    setting = SequenceLoss(0.99, 1.0, 1.0)

    def grad_of_h0(loss_from: list[int]) -> torch.Tensor:
        start = torch.randn(2, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
        loss = sequence_loss(
            net, params, params, seq, start, mask, torch.tensor(loss_from), setting
        )
        (grad,) = torch.autograd.grad(loss, start)
        return grad

    assert grad_of_h0([0, 0]).abs().min(dim=1).values.max() > 0  # through every step
    cut = grad_of_h0([4, 0])
    assert torch.equal(cut[0], torch.zeros(8))  # burn-in: no gradient into the stored state
    assert cut[1].abs().max() > 0


@pytest.fixture(scope="module")
def tiny_learner() -> RecurrentLearner:
    cfg = load_config(CONFIG, [*TINY, "env.num_envs=1"], steps=2000)
    learner = RecurrentLearner(cfg)
    yield learner
    learner.close()


def test_sequences_overlap_by_the_burn_in_and_every_step_gets_the_loss_once(
    tiny_learner: RecurrentLearner,
) -> None:
    learner = tiny_learner
    learner.replay.size = learner.replay.pos = 0
    life = learner.lives[0]
    life.pending, life.at_start, life.fresh = [], True, 0
    states = [np.full(8, float(t), np.float32) for t in range(21)]
    for t, row in enumerate(rows(transitions(20, seed=7))):
        life.hidden = states[t]
        learner._store(life, row)
    learner._flush(life)  # the life ends: the last, shorter sequence
    replay = learner.replay
    assert len(replay) == 4  # 8 steps, then 5 new ones after each 3-step overlap
    assert replay.loss_from[:4].tolist() == [0, 3, 3, 3]
    assert replay.mask[:4].sum(1).tolist() == [8, 8, 8, 5]  # the last: 3 + 2 new steps
    trained = [replay.mask[i, replay.loss_from[i] :].sum() for i in range(4)]
    assert sum(trained) == 20  # every transition carries the loss exactly once
    for i in range(3):
        assert np.array_equal(replay.obs[i + 1, :3], replay.obs[i, 5:8])
    # each stored sequence starts from the online state before its first step
    assert [float(replay.h0[i, 0]) for i in range(4)] == [0.0, 5.0, 10.0, 15.0]


def test_a_life_is_a_support_phase_then_two_acting_episodes_on_one_robot(
    tiny_learner: RecurrentLearner,
) -> None:
    learner = tiny_learner
    learner.boundary()
    life = learner.lives[0]
    task = learner.envs[0].unwrapped.get_task()
    support = life.support_left
    for _ in range(support):
        assert not learner.lives[0].acting
        learner.iterate()
    assert learner.lives[0] is life and life.acting and learner.envs[0].unwrapped.get_task() == task
    assert np.abs(life.hidden).max() > 0  # the state carries into the acting phase
    while learner.lives[0] is life:
        learner.iterate()
    assert np.array_equal(learner.lives[0].hidden, np.zeros(8, np.float32))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "memory.burn_in=32",
            r"'memory.burn_in': recurrent .* memory.burn_in < memory.sequence_length \(32\), "
            r"got 32 in .*cartpole_recurrent.yaml",
        ),
        ("adaptation.loss=model", r"'adaptation.loss': recurrent trains .* got 'model'"),
        ("network.context_dim=4", r"'network.context_dim': recurrent .* must be 0, got 4"),
        (
            "dqn.n_step=3",
            r"'dqn.n_step': recurrent .*\(one-step targets\), so it needs dqn.n_step 1, got 3 "
            r"in .*cartpole_recurrent.yaml",
        ),
    ],
)
def test_config_rules_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(CONFIG, [override])


def test_the_registry_names_the_family_and_its_kind() -> None:
    spec = algorithms.get("recurrent")
    assert (spec.family, spec.adapts, spec.bundle_kind) == ("recurrent", True, "recurrent")
    assert spec.load() is RecurrentLearner
    assert RecurrentLearner.network_class is RecurrentQNetwork


@pytest.mark.parametrize("name", ["cartpole_recurrent", "diffdrive_recurrent"])
def test_the_shipped_configs_use_the_context_budgets(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    context = load_config(ROOT / "configs" / f"{name.split('_')[0]}_context.yaml")
    assert cfg.algorithm == "recurrent" and cfg.env.id == context.env.id
    assert cfg.dqn.total_steps == context.dqn.total_steps
    assert cfg.memory.burn_in < cfg.memory.sequence_length


def test_a_saved_policy_loads_with_its_gru(tmp_path: Path) -> None:
    policy = untrained_policy(seed=5, hidden_size=6)
    loaded = Policy.load(policy.save(tmp_path / "policy.pt"))
    assert type(loaded.net) is RecurrentQNetwork and loaded.net.hidden_size == 6
    assert loaded.params.keys() == policy.params.keys()
    assert all(torch.equal(loaded.params[k], v) for k, v in policy.params.items())
    support = transitions(25, seed=8)
    assert torch.equal(
        warm_state(loaded.net, loaded.params, support),
        warm_state(policy.net, policy.params, support),
    )


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("steps_per_s", "wall_s")}
            for r in csv.DictReader(f)
        ]


def test_a_short_run_trains_resumes_exactly_saves_loads_and_evaluates(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, TINY, steps=1200)
    policy = train(cfg, tmp_path / "run")
    assert policy.adapt_steps == 1 and policy.lrs == {}
    rows_ = _metrics(tmp_path / "run")
    assert float(rows_[-1]["loss"]) > 0 and int(rows_[-1]["env_steps"]) == 1200
    # stopped between checkpoints and resumed: the uninterrupted run, to the bit
    train(load_config(CONFIG, TINY, steps=1200), tmp_path / "resumed", stop_after=900)
    resumed = train(None, tmp_path / "resumed", resume=True)  # type: ignore[arg-type]
    assert _metrics(tmp_path / "resumed") == rows_
    assert all(torch.equal(resumed.params[k], v) for k, v in policy.params.items())

    loaded = Policy.load(tmp_path / "run")
    assert type(loaded.net) is RecurrentQNetwork
    method = RecurrentLearner.evaluation_method(loaded, "recurrent", 0.3)
    env = make_env(loaded.env_id)
    task = env.unwrapped.sample_tasks(1, seed=0, split="test")[0]
    support = collect(env, method.initial_actor(), task, 20, 0.3, np.random.default_rng(0)).all()
    cold, warm, warm_too = method.adapted_actors(support, [0, 1, 5])
    assert np.array_equal(cold.hidden, np.zeros(8, np.float32))
    h = warm_state(loaded.net, loaded.params, support).detach().numpy()
    assert np.abs(warm.hidden - h).max() < 1e-5 and np.array_equal(warm.hidden, warm_too.hidden)
    before = warm_too.hidden.copy()
    episode_return(env, warm, task, seed=3)  # follows the robot: its own state only
    assert np.abs(warm.hidden - before).max() > 0 and np.array_equal(warm_too.hidden, before)
    episode_return(env, cold, task, seed=3)  # k = 0: a cold start, and its memory follows too
    assert np.abs(cold.hidden).max() > 0
    env.close()
    sized = with_support(method, 7)
    assert isinstance(sized, RecurrentMethod) and sized.support_size == 7
    with pytest.raises(ValueError, match="no gradient fine-tuning"):
        RecurrentLearner.evaluation_method(loaded, "x", 0.3, lrs={"q_head.bias": torch.tensor(1.0)})
    frozen = RecurrentLearner.evaluation_method(loaded, "x", 0.3, lrs={})
    (never_warmed,) = frozen.adapted_actors(support, [1])
    assert np.array_equal(never_warmed.hidden, np.zeros(8, np.float32))


def test_resume_is_exact_after_the_sequence_replay_wraps(tmp_path: Path) -> None:
    # 20 sequences (100 transitions, a stride of 5): the ring is full and wrapped well before
    # the checkpoint at step 600, so a resume must restore its slots and pos exactly
    small = [*TINY, "dqn.buffer_size=100"]
    cfg = load_config(CONFIG, small, steps=1200)
    learner = RecurrentLearner(cfg)
    capacity = learner.replay.capacity
    while learner.env_steps < 600:
        learner.iterate()
    assert capacity == 20 and len(learner.replay) == capacity and learner.replay.pos != 0
    state = learner.replay.state_dict()
    copy = RecurrentLearner(cfg)
    copy.replay.load_state_dict(state)
    for name in ("obs", "action", "h0", "mask", "loss_from"):
        assert np.array_equal(getattr(copy.replay, name), getattr(learner.replay, name)), name
    assert copy.replay.pos == learner.replay.pos
    learner.close()
    copy.close()
    policy = train(cfg, tmp_path / "run")
    train(load_config(CONFIG, small, steps=1200), tmp_path / "resumed", stop_after=900)
    resumed = train(None, tmp_path / "resumed", resume=True)  # type: ignore[arg-type]
    assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "run")
    assert all(torch.equal(resumed.params[k], v) for k, v in policy.params.items())


# ---------------------------------------------------------------------------- slow: learning

#: pinned settings of the slow test: the shipped CartPole config (model selection included, on
#: its own training robots) at 60% of its budget
PINNED = ["logging.progress=false"]
PINNED_STEPS = 24000


class FrozenMemory:
    """No adaptation: the trained network acting with its state held at zero (no observe)."""

    def __init__(self, policy: Policy) -> None:
        self.actor = RecurrentActor(policy.net, policy.params)

    def __call__(self, obs: np.ndarray) -> int:
        return self.actor(obs)


@pytest.mark.slow
def test_a_short_run_adapts_better_than_no_adaptation_on_training_robots(
    tmp_path: Path,
) -> None:
    cfg = load_config(CONFIG, PINNED, steps=PINNED_STEPS, seed=0)
    policy = train(cfg, tmp_path / "run")
    env = make_env(policy.env_id)
    tasks = env.unwrapped.sample_tasks(8, seed=6_000, split="train")  # not selection's
    method = RecurrentLearner.evaluation_method(policy, "recurrent", 0.3)
    res = evaluate_method(method, [TaskSet("train", tasks)], [0, 1], episodes=2)
    cold, warm = np.mean(res["train"], axis=0)
    frozen = np.mean(
        [episode_return(env, FrozenMemory(policy), t, 10_000 + i) for i, t in enumerate(tasks)]
    )
    env.close()
    # adapting (the state warmed on 200 support transitions, then following the robot)
    # beats the same network without its memory by far, and the cold start (no support)
    assert warm > frozen + 50, (frozen, cold, warm)
    assert warm > cold, (frozen, cold, warm)
