"""The ``hyper-context`` method of the context family (robometa.methods.hyper_context): the
hypernetwork head on the context network's body, which reads ``[s, z]``; its registry entry
and configs, a short run, the numpy actor, and the ``context`` bundle's runtime parity."""

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
from robometa.methods.context import context_q, encode
from robometa.methods.hyper_context import (
    HyperContextLearner,
    HyperContextQNetwork,
    untrained_hyper_context_policy,
)
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


def test_the_context_reaches_q_through_the_body_and_the_generated_layer() -> None:
    policy = untrained_hyper_context_policy(seed=1)
    net, params = policy.net, policy.params
    obs = transitions(8, seed=2).obs
    z = torch.randn(3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h0, hz = net.features(obs), net.features(obs, z)
        assert (hz - h0).abs().max() > 1e-4  # the body reads z
        base = hz @ params["q_head.weight"].T + params["q_head.bias"]
        full = context_q(net, params, obs, z)
        assert (full - base).abs().max() > 1e-4  # and z generates the output layer
        w, b = net.q_head.layer(z)
        assert torch.allclose(full, hz @ w.T + b, atol=1e-6)


def test_the_numpy_actor_is_the_torch_q_path() -> None:
    policy = untrained_hyper_context_policy(seed=4)
    obs = transitions(32, seed=5).obs
    for z in (None, torch.randn(3, generator=torch.Generator().manual_seed(6))):
        act = policy.net.numpy_actor(policy.params, z)
        with torch.no_grad():
            expected = context_q(policy.net, policy.params, obs, z).argmax(1).tolist()
        assert [act(o) for o in obs.numpy()] == expected


def test_the_registry_entry_and_both_configs_load() -> None:
    spec = algorithms.get("hyper-context")
    assert (spec.family, spec.adapts, spec.bundle_kind) == ("context", True, "context")
    assert spec.load() is HyperContextLearner
    assert HyperContextLearner.network_class is HyperContextQNetwork
    for name in ("cartpole", "diffdrive"):
        cfg = load_config(ROOT / "configs" / f"{name}_hyper-context.yaml")
        ref = load_config(ROOT / "configs" / f"{name}_hyper.yaml")
        assert cfg.algorithm == "hyper-context"
        assert cfg.to_dict() | {"algorithm": "hyper"} == ref.to_dict()  # only the method differs


def test_a_short_run_trains_saves_and_loads(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "cartpole_hyper-context.yaml",
        ["logging.progress=false", "logging.eval_every=0", "meta.updates_per_collect=2"],
        steps=400,
    )
    policy = train(cfg, tmp_path / "run")
    loaded = Policy.load(tmp_path / "run")
    assert loaded.algorithm == "hyper-context" and type(loaded.net) is HyperContextQNetwork
    assert all(torch.equal(loaded.params[k], v) for k, v in policy.params.items())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, Path]:
    policy = untrained_hyper_context_policy(seed=3, support_size=40)
    return policy, export_bundle(policy, tmp_path_factory.mktemp("hyperctx") / "bundle")


@pytest.mark.parametrize("n", [10, 200])
def test_the_runtime_matches_torch_context_and_q_values(built, n: int) -> None:
    policy, path = built
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert (manifest["kind"], manifest["algorithm"]) == ("context", "hyper-context")
    adapter = Adapter.load(path, capacity=200)
    batch = transitions(n, seed=n, scale=0.05)
    for row in zip(*(f.numpy() for f in batch), strict=True):
        assert adapter.observe(*row)
    with torch.no_grad():
        z = encode(policy.net, policy.params, batch)
        obs = transitions(16, seed=99, scale=0.05).obs
        q0 = context_q(policy.net, policy.params, obs, None).numpy()
        qz = context_q(policy.net, policy.params, obs, z).numpy()
    assert np.abs(qz - q0).max() > 1e-4
    assert np.abs(adapter.q_values(obs.numpy()) - q0).max() <= TOLERANCE
    report = adapter.adapt()
    assert report.accepted and report.steps == 1 and report.n_transitions == n
    assert np.abs(adapter.context - z.numpy()).max() <= TOLERANCE
    assert np.abs(adapter.q_values(obs.numpy()) - qz).max() <= TOLERANCE
    assert [adapter.act(o) for o in obs.numpy()] == qz.argmax(1).tolist()
