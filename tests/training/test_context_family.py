"""The ``context`` family (robometa.methods.context): the encoder's properties, training,
evaluation and save/load; the slow tests train it briefly at pinned settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import robometa.algorithms as algorithms
from robometa.adaptation import Batch
from robometa.config import load_config
from robometa.evaluate import TaskSet, evaluate_method
from robometa.methods.context import (
    ContextLearner,
    ContextQNetwork,
    context_actor,
    context_q,
    encode,
    untrained_policy,
)
from robometa.policy import Policy
from robometa.rollout import collect, make_env
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]


def support_batch(n: int, seed: int = 0, obs_dim: int = 4, n_actions: int = 3) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=gen)
    return Batch(
        obs,
        torch.randint(0, n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + 0.1 * torch.randn(n, obs_dim, generator=gen),
        torch.zeros(n),
    )


def test_the_context_is_invariant_to_the_order_of_the_transitions() -> None:
    policy = untrained_policy(seed=1)
    batch = support_batch(50)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(2))
    shuffled = Batch(*(field[perm] for field in batch))
    z, z_shuffled = (encode(policy.net, policy.params, b) for b in (batch, shuffled))
    assert torch.allclose(z, z_shuffled, atol=1e-6)
    assert z.abs().max() > 1e-3  # not trivially zero


def test_an_empty_support_gives_the_zero_context_the_unadapted_policy_acts_with() -> None:
    policy = untrained_policy(seed=1)
    net, params = policy.net, policy.params
    empty = support_batch(0)
    assert torch.equal(encode(net, params, empty), torch.zeros(net.spec.context_dim))
    obs = support_batch(7).obs
    from robometa.networks import q_values

    assert torch.equal(context_q(net, params, obs, None), q_values(net, params, obs))


def test_a_masked_batch_of_supports_gives_each_tasks_own_context() -> None:
    policy = untrained_policy(seed=1)
    net, params = policy.net, policy.params
    a, b = support_batch(5, seed=3), support_batch(9, seed=4)
    padded = Batch(*(torch.stack([torch.cat([x, x[:4]]), y]) for x, y in zip(a, b, strict=True)))
    mask = torch.tensor([[1.0] * 5 + [0.0] * 4, [1.0] * 9])
    z = encode(net, params, padded, mask)
    assert torch.allclose(z[0], encode(net, params, a), atol=1e-6)
    assert torch.allclose(z[1], encode(net, params, b), atol=1e-6)
    none = encode(net, params, padded, torch.zeros(2, 9))
    assert torch.equal(none, torch.zeros(2, net.spec.context_dim))


def test_the_numpy_actor_is_the_torch_q_path() -> None:
    policy = untrained_policy(seed=4)
    obs = support_batch(20, seed=5).obs
    z = encode(policy.net, policy.params, support_batch(30, seed=6))
    for context in (None, z):
        act = context_actor(policy.net, policy.params, context)
        greedy = context_q(policy.net, policy.params, obs, context).argmax(1).tolist()
        assert [act(o.numpy()) for o in obs] == greedy


def test_the_registry_names_the_family_and_its_kind() -> None:
    spec = algorithms.get("context")
    assert (spec.family, spec.adapts, spec.bundle_kind) == ("context", True, "context")
    assert spec.load() is ContextLearner
    assert ContextLearner.network_class is ContextQNetwork


@pytest.mark.parametrize("name", ["cartpole_context", "diffdrive_context"])
def test_the_shipped_configs_use_the_cavia_budgets(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    cavia = load_config(ROOT / "configs" / f"{name.split('_')[0]}_cavia.yaml")
    assert cfg.algorithm == "context"
    assert cfg.dqn.total_steps == cavia.dqn.total_steps
    assert (cfg.meta.meta_batch, cfg.meta.collect_steps, cfg.meta.updates_per_collect) == (
        cavia.meta.meta_batch,
        cavia.meta.collect_steps,
        cavia.meta.updates_per_collect,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adaptation.loss=model", r"'adaptation.loss': context trains .* got 'model'"),
        ("network.context_dim=0", r"'network.context_dim': context needs a context vector"),
    ],
)
def test_config_rules_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(ROOT / "configs" / "cartpole_context.yaml", [override])


def test_a_short_run_trains_saves_loads_and_evaluates(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "cartpole_context.yaml",
        ["logging.progress=false", "logging.eval_every=0", "meta.updates_per_collect=2"],
        steps=800,
    )
    policy = train(cfg, tmp_path / "run")
    assert policy.adapt_steps == 1 and policy.lrs == {}
    loaded = Policy.load(tmp_path / "run")
    assert type(loaded.net) is ContextQNetwork
    assert loaded.params.keys() == policy.params.keys()
    assert all(torch.equal(loaded.params[k], v) for k, v in policy.params.items())
    method = ContextLearner.evaluation_method(loaded, "context", 0.3)
    env = make_env(loaded.env_id)
    task = env.unwrapped.sample_tasks(1, seed=0, split="test")[0]
    support = collect(env, method.initial_actor(), task, 20, 0.3, np.random.default_rng(0)).all()
    z = method.context(support)
    obs = support.obs
    acts = [a(o.numpy()) for a in method.adapted_actors(support, [0, 1]) for o in obs]
    n = len(obs)
    assert acts[:n] == context_q(loaded.net, loaded.params, obs, None).argmax(1).tolist()
    assert acts[n:] == context_q(loaded.net, loaded.params, obs, z).argmax(1).tolist()
    env.close()
    with pytest.raises(ValueError, match="no gradient fine-tuning"):
        ContextLearner.evaluation_method(loaded, "x", 0.3, lrs={"body.0.weight": torch.tensor(1.0)})


# ---------------------------------------------------------------------------- slow: learning

#: pinned settings of the slow tests: the shipped CartPole config at its full budget (about
#: 10 s of training here)
PINNED = ["logging.progress=false", "logging.eval_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    cfg = load_config(ROOT / "configs" / "cartpole_context.yaml", PINNED, seed=0)
    return train(cfg, tmp_path_factory.mktemp("context") / "run")


def _supports(policy: Policy, tasks: list, n: int, seed: int) -> list[Batch]:
    env = make_env(policy.env_id)
    act = context_actor(policy.net, policy.params, None)
    rng = np.random.default_rng(seed)
    out = [collect(env, act, t, n, 0.3, rng).all() for t in tasks]
    env.close()
    return out


@pytest.mark.slow
def test_a_linear_probe_on_the_context_predicts_the_motor_sign_of_held_out_robots(
    trained: Policy,
) -> None:
    env = make_env(trained.env_id)
    space = env.unwrapped.dynamics_space
    env.close()
    fit_tasks = space.sample(30, seed=101, split="train")
    held_out = space.sample(30, seed=202, split="train")  # robots training never saw

    def features(tasks: list) -> tuple[np.ndarray, np.ndarray]:
        zs = [encode(trained.net, trained.params, b) for b in _supports(trained, tasks, 200, 7)]
        x = torch.stack(zs).detach().numpy()
        return np.c_[x, np.ones(len(x))], np.array([t["motor_sign"] for t in tasks], float)

    x_fit, y_fit = features(fit_tasks)
    x_test, y_test = features(held_out)
    w = np.linalg.lstsq(x_fit, y_fit, rcond=None)[0]
    accuracy = float((np.sign(x_test @ w) == y_test).mean())
    assert accuracy >= 0.8, accuracy


@pytest.mark.slow
def test_the_trained_encoder_adapts_better_than_no_adaptation_on_training_robots(
    trained: Policy,
) -> None:
    env = make_env(trained.env_id)
    tasks = env.unwrapped.sample_tasks(8, seed=5_000, split="train")
    env.close()
    method = ContextLearner.evaluation_method(trained, "context", 0.3)
    res = evaluate_method(method, [TaskSet("train", tasks)], [0, 1], episodes=2)
    before, after = np.mean(res["train"], axis=0)
    assert after > before + 30, (before, after)
