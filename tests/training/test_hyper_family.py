"""The ``hyper`` method of the context family (robometa.methods.hyper): the hypernetwork Q
head at and away from ``z = 0``, the inherited encoder, the registry entry and configs, a
short run, and the ``context`` bundle's export and runtime parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE

import robometa.algorithms as algorithms
from robometa.adaptation import Batch
from robometa.bundle import export_bundle
from robometa.config import load_config
from robometa.methods.context import context_actor, context_q, encode
from robometa.methods.hyper import HyperLearner, HyperQNetwork, untrained_hyper_policy
from robometa.policy import Policy
from robometa.train import train

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5


def transitions(n: int, seed: int, scale: float = 1.0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = scale * torch.randn(n, 4, generator=gen)
    return Batch(
        obs,
        torch.randint(0, 3, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + 0.1 * scale * torch.randn(n, 4, generator=gen),
        torch.zeros(n),
    )


def test_at_zero_context_q_is_the_base_layer_on_the_body_of_s() -> None:
    policy = untrained_hyper_policy(seed=1)
    net, params = policy.net, policy.params
    obs = transitions(7, seed=2).obs
    with torch.no_grad():
        h = net.features(obs)
        base = h @ params["q_head.weight"].T + params["q_head.bias"]
        zero = torch.zeros(net.spec.context_dim)
        assert torch.allclose(context_q(net, params, obs, None), base, atol=1e-6)
        assert torch.allclose(context_q(net, params, obs, zero), base, atol=1e-6)
        # h(s) reads s alone: the body's input is the observation, not [s, z]
        assert net.body[0].in_features == net.spec.obs_dim


def test_changing_the_context_changes_the_output_layer_and_the_q_values() -> None:
    policy = untrained_hyper_policy(seed=1)
    net, params = policy.net, policy.params
    obs = transitions(7, seed=2).obs
    z1, z2 = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([-0.3, 0.8, 0.2])
    with torch.no_grad():
        (w1, b1), (w2, b2) = net.q_head.layer(z1), net.q_head.layer(z2)
        assert (w1 - w2).abs().max() > 1e-2 and (b1 - b2).abs().max() > 1e-2
        q1, q2 = context_q(net, params, obs, z1), context_q(net, params, obs, z2)
        assert (q1 - q2).abs().max() > 1e-2
        assert torch.allclose(q1, net.features(obs) @ w1.T + b1, atol=1e-5)
        # one context per leading index: a batch of tasks is each task's own output layer
        both = context_q(net, params, torch.stack([obs, obs]), torch.stack([z1, z2]))
        assert torch.allclose(both[0], q1, atol=1e-5) and torch.allclose(both[1], q2, atol=1e-5)
        _, delta = net(obs, True, z1)
        assert delta.shape == (7, 3, 4)
    for context in (None, z1, z2):
        act = context_actor(net, params, context)
        greedy = context_q(net, params, obs, context).argmax(1).tolist()
        assert [act(o.numpy()) for o in obs] == greedy


def test_the_context_is_invariant_to_the_order_of_the_transitions() -> None:
    policy = untrained_hyper_policy(seed=1)
    batch = transitions(50, seed=3)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(2))
    z, z_shuffled = (
        encode(policy.net, policy.params, b) for b in (batch, Batch(*(f[perm] for f in batch)))
    )
    assert torch.allclose(z, z_shuffled, atol=1e-6) and z.abs().max() > 1e-3


def test_the_registry_entry_and_both_configs_load() -> None:
    spec = algorithms.get("hyper")
    assert (spec.family, spec.adapts, spec.bundle_kind) == ("context", True, "context")
    assert spec.load() is HyperLearner and HyperLearner.network_class is HyperQNetwork
    for name, cavia in (("cartpole", "cartpole_context"), ("diffdrive", "diffdrive_context")):
        cfg = load_config(ROOT / "configs" / f"{name}_hyper.yaml")
        ref = load_config(ROOT / "configs" / f"{cavia}.yaml")
        assert cfg.algorithm == "hyper" and cfg.network.context_dim >= 1
        assert cfg.dqn.total_steps == ref.dqn.total_steps
        assert cfg.meta.updates_per_collect == ref.meta.updates_per_collect


def test_a_short_run_trains_saves_and_loads_the_hyper_network(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "cartpole_hyper.yaml",
        ["logging.progress=false", "logging.eval_every=0", "meta.updates_per_collect=2"],
        steps=400,
    )
    policy = train(cfg, tmp_path / "run")
    loaded = Policy.load(tmp_path / "run")
    assert loaded.algorithm == "hyper" and type(loaded.net) is HyperQNetwork
    assert all(torch.equal(loaded.params[k], v) for k, v in policy.params.items())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, Path]:
    policy = untrained_hyper_policy(seed=3, support_size=40)
    return policy, export_bundle(policy, tmp_path_factory.mktemp("hyper") / "bundle")


def test_the_bundle_is_the_context_kind_with_the_generator_a_policy_input(built) -> None:
    _, path = built
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert (manifest["kind"], manifest["algorithm"]) == ("context", "hyper")
    assert "q_head.z_weight" in manifest["network"]["policy_inputs"]


@pytest.mark.parametrize("n", [10, 200])
def test_the_runtime_matches_torch_context_and_q_values(built, n: int) -> None:
    policy, path = built
    adapter = Adapter.load(path, capacity=200)
    batch = transitions(n, seed=n, scale=0.05)
    for row in zip(*(f.numpy() for f in batch), strict=True):
        assert adapter.observe(*row)
    with torch.no_grad():
        z = encode(policy.net, policy.params, batch)
        obs = transitions(16, seed=99, scale=0.05).obs
        q0 = context_q(policy.net, policy.params, obs, None).numpy()
        qz = context_q(policy.net, policy.params, obs, z).numpy()
    assert np.abs(qz - q0).max() > 1e-4  # the inferred context moves the output layer
    assert np.abs(adapter.q_values(obs.numpy()) - q0).max() <= TOLERANCE
    report = adapter.adapt()
    assert report.accepted and report.steps == 1 and report.n_transitions == n
    assert np.abs(adapter.context - z.numpy()).max() <= TOLERANCE
    assert np.abs(adapter.q_values(obs.numpy()) - qz).max() <= TOLERANCE
    assert [adapter.act(o) for o in obs.numpy()] == qz.argmax(1).tolist()
