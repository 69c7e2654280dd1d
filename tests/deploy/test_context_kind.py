"""The ``context`` bundle kind end to end: export with its parity check, the reader's
layout, the runtime's parity with torch (context and Q-values within 1e-5), the adaptation
loop (``run_rounds`` and ``robometa-deploy adapt``), reset and saved state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_robot import FakeCartPole
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE, Bundle
from robometa.deploy.cli import main as deploy_main
from robometa.deploy.context import CONTEXT, ENCODER_GRAPH, ContextAdapter
from robometa.deploy.loop import run_rounds

from robometa.adaptation import Batch
from robometa.bundle import export_bundle
from robometa.methods.context import context_q, encode, untrained_policy

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    policy = untrained_policy(seed=3, support_size=40)
    return policy, export_bundle(policy, tmp_path_factory.mktemp("ctx") / "bundle")


def transitions(n: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = 0.05 * torch.randn(n, 4, generator=gen)
    return Batch(
        obs,
        torch.randint(0, 3, (n,), generator=gen),
        torch.ones(n),
        obs + 0.02 * torch.randn(n, 4, generator=gen),
        torch.zeros(n),
    )


def test_the_bundle_holds_the_kinds_files_and_loads_its_runtime(built) -> None:
    _, path = built
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "context" and manifest["algorithm"] == "context"
    assert sorted(manifest["graphs"]) == ["encoder", "policy"]
    assert manifest["context"]["dim"] == 3 and manifest["context"]["support_size"] == 40
    assert sorted(manifest["files"]) == [ENCODER_GRAPH, "params.npz", "policy.onnx"]
    adapter = Adapter.load(path)
    assert type(adapter) is ContextAdapter and Bundle.load(path).kind == "context"
    assert adapter.buffer.capacity == 40 and adapter.from_meta
    assert np.array_equal(adapter.context, np.zeros(3, np.float32))


@pytest.mark.parametrize("n", [1, 10, 200])
def test_the_runtime_matches_torch_context_and_q_values(built, n: int) -> None:
    policy, path = built
    adapter = Adapter.load(path, capacity=200)
    batch = transitions(n, seed=n)
    for row in zip(*(f.numpy() for f in batch), strict=True):
        assert adapter.observe(*row)
    with torch.no_grad():
        z = encode(policy.net, policy.params, batch)
        obs = transitions(16, seed=99).obs
        q0 = context_q(policy.net, policy.params, obs, None).numpy()
        qz = context_q(policy.net, policy.params, obs, z).numpy()
    assert np.abs(adapter.q_values(obs.numpy()) - q0).max() <= TOLERANCE
    report = adapter.adapt()
    assert report.accepted and report.steps == 1 and report.n_transitions == n
    assert np.abs(adapter.context - z.numpy()).max() <= TOLERANCE
    assert np.abs(adapter.q_values(obs.numpy()) - qz).max() <= TOLERANCE
    assert [adapter.act(o) for o in obs.numpy()] == qz.argmax(1).tolist()
    with adapter.acting_with_meta():
        assert np.abs(adapter.q_values(obs.numpy()) - q0).max() <= TOLERANCE


def test_the_runtime_context_ignores_the_order_of_the_buffer(built) -> None:
    _, path = built
    batch = [f.numpy() for f in transitions(30, seed=1)]
    contexts = []
    for order in (np.arange(30), np.random.default_rng(0).permutation(30)):
        adapter = Adapter.load(path, capacity=30)
        for i in order:
            adapter.observe(*(f[i] for f in batch))
        adapter.adapt()
        contexts.append(adapter.context)
    assert np.abs(contexts[0] - contexts[1]).max() <= 1e-6


def test_adapt_without_transitions_or_steps_keeps_the_context_and_reset_clears_it(built) -> None:
    _, path = built
    adapter = Adapter.load(path)
    report = adapter.adapt()
    assert not report.accepted and "only 0 transitions" in report.reason
    for row in zip(*(f.numpy() for f in transitions(5, seed=2)), strict=True):
        adapter.observe(*row)
    assert not adapter.adapt(0).accepted
    assert np.array_equal(adapter.context, np.zeros(3, np.float32))
    assert adapter.adapt(3).accepted
    assert np.abs(adapter.context).max() > 0
    adapter.reset()
    assert np.array_equal(adapter.context, np.zeros(3, np.float32)) and len(adapter.buffer) == 0
    with pytest.raises(TypeError, match="from_meta"):
        adapter.adapt(from_meta="yes")


def test_saved_state_restores_context_and_buffer(built, tmp_path: Path) -> None:
    _, path = built
    adapter = Adapter.load(path)
    for row in zip(*(f.numpy() for f in transitions(12, seed=4)), strict=True):
        adapter.observe(*row)
    adapter.adapt()
    state = adapter.save_state(tmp_path / "state.npz")
    restored = Adapter.load(path)
    restored.load_state(state)
    assert np.array_equal(restored.context, adapter.context) and len(restored.buffer) == 12
    obs = np.array([0.01, 0.0, 0.02, 0.0], np.float32)
    assert restored.act(obs) == adapter.act(obs)
    with pytest.raises(ValueError, match="restore_params: context"):
        restored.restore_params({CONTEXT: np.zeros(5, np.float32)})


def test_run_rounds_adapts_a_context_bundle_on_a_robot(built) -> None:
    _, path = built
    adapter = Adapter.load(path, capacity=40)
    results = run_rounds(adapter, FakeCartPole(), rounds=2, support=40, steps=1, seed=0)
    assert [r.round for r in results] == [0, 1, 2]
    assert all(r.report.accepted and r.report.n_transitions == 40 for r in results[1:])
    assert np.abs(adapter.context).max() > 0


def test_robometa_deploy_adapt_runs_a_context_bundle(built, capsys) -> None:
    _, path = built
    capsys.readouterr()
    args = ["adapt", "--bundle", str(path), "--sample-test-task", "0", "--rounds", "1"]
    assert deploy_main([*args, "--support", "20", "--eval-episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "a context bundle; adapts a 3-d context inferred by encoder.onnx" in out
    assert deploy_main(["info", "--bundle", str(path)]) == 0
    assert "kind        context" in capsys.readouterr().out.splitlines()
