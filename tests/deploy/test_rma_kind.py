"""The ``history`` bundle kind (what the ``rma`` family exports) end to end: export with its
parity check, the reader's layout, the runtime's parity with torch over a rollout (extrinsics
and Q-values within 1e-5 after every history update), reset, saved state, ``run_rounds`` and
``robometa-deploy adapt``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_robot import FakeCartPole
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE, Bundle
from robometa.deploy.cli import main as deploy_main
from robometa.deploy.history import CONTEXT, HISTORY_GRAPH, MASK, WINDOW, HistoryAdapter
from robometa.deploy.loop import greedy_return, run_rounds
from robometa.deploy.state import StateError

from robometa.bundle_history import parity_rollout
from robometa.methods.rma import (
    HistoryActor,
    history_context,
    ordered_window,
    rma_q,
    window_row,
    window_width,
)

TOLERANCE = 1e-5


def observe_all(adapter: HistoryAdapter, rollout: list) -> None:
    for t in rollout:
        assert adapter.observe(*t)


def test_the_bundle_holds_the_kinds_files_and_loads_its_runtime(rma) -> None:
    manifest = json.loads((rma.path / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "history" and manifest["algorithm"] == "rma"
    assert sorted(manifest["graphs"]) == ["history", "policy"]
    section = manifest["history"]
    assert (section["length"], section["width"], section["context_dim"]) == (8, 11, 3)
    assert section["support_size"] == 40
    assert sorted(manifest["files"]) == [HISTORY_GRAPH, "params.npz", "policy.onnx"]
    adapter = Adapter.load(rma.path)
    assert type(adapter) is HistoryAdapter and Bundle.load(rma.path).kind == "history"
    assert adapter.buffer.capacity == 40 and not adapter.from_meta
    empty = rma.policy.params["history_out.bias"].numpy()
    assert np.abs(adapter.context - empty).max() <= TOLERANCE


def test_every_history_update_matches_torch_extrinsics_and_q_values(rma) -> None:
    policy, net = rma.policy, rma.policy.net
    adapter = Adapter.load(rma.path)
    rollout = parity_rollout(policy, 30, seed=5)
    probe = torch.from_numpy(np.stack([t[0] for t in rollout[:6]]))
    rows, contexts = [], []
    for obs, action, reward, nxt, term in rollout:
        assert adapter.observe(obs, action, reward, nxt, term)
        rows.append(window_row(obs, action, nxt, net.spec.n_actions))
        window, mask = ordered_window(rows, net.spec.history, window_width(net.spec))
        with torch.no_grad():
            z = history_context(net, policy.params, window, mask)
            q = rma_q(net, policy.params, probe, z).numpy()
        assert np.abs(adapter.context - z.numpy()).max() <= TOLERANCE
        assert np.abs(adapter.q_values(probe.numpy()) - q).max() <= TOLERANCE
        assert [adapter.act(o) for o in probe.numpy()] == q.argmax(1).tolist()
        contexts.append(adapter.context.copy())
    # the extrinsics move with every step, and the window slides: 8 rows, newest last
    assert all(np.abs(a - b).max() > 1e-4 for a, b in itertools.pairwise(contexts))
    assert adapter.mask.tolist() == [1.0] * 8
    assert np.array_equal(adapter.window[-1], rows[-1]) and np.array_equal(
        adapter.window[0], rows[-8]
    )
    assert np.abs(HistoryActor(net, policy.params, rows).z - adapter.context).max() <= TOLERANCE


def test_adapt_rebuilds_the_window_from_the_buffer_and_reset_clears_it(rma) -> None:
    adapter = Adapter.load(rma.path)
    empty = adapter.context.copy()
    assert not adapter.adapt().accepted  # nothing buffered
    rollout = parity_rollout(rma.policy, 12, seed=2)
    observe_all(adapter, rollout)
    online = adapter.context.copy()
    adapter.restore_params(adapter.meta_params)  # the empty window again
    assert np.abs(adapter.context - empty).max() == 0
    assert not adapter.adapt(0).accepted and np.array_equal(adapter.context, empty)
    report = adapter.adapt()
    assert report.accepted and report.n_transitions == 12 and report.n_train == 8
    assert np.abs(adapter.context - online).max() <= TOLERANCE
    adapter.reset()
    assert np.array_equal(adapter.context, empty) and len(adapter.buffer) == 0
    assert adapter.mask.sum() == 0 and np.abs(adapter.window).max() == 0
    with adapter.acting_with_meta():
        observe_all(adapter, rollout[:3])
        probe = np.asarray([t[0] for t in rollout[:4]])
        meta_q = adapter.q_values(probe)
    assert adapter.mask.sum() == 3  # the window followed observe inside the block
    assert np.abs(meta_q - adapter.q_values(probe)).max() > 1e-4
    with pytest.raises(TypeError, match="from_meta"):
        adapter.adapt(from_meta="yes")


def test_follow_updates_the_window_without_buffering_and_skips_bad_transitions(rma) -> None:
    adapter = Adapter.load(rma.path)
    obs, action, reward, nxt, term = parity_rollout(rma.policy, 1, seed=3)[0]
    assert adapter.follow(obs, action, reward, nxt, term)
    assert len(adapter.buffer) == 0 and adapter.mask.sum() == 1
    assert not adapter.follow(obs, 7, reward, nxt, term)  # action outside [0, 3)
    assert adapter.mask.sum() == 1 and adapter.rejected == {}


def test_saved_state_restores_window_extrinsics_and_buffer(rma, tmp_path: Path) -> None:
    adapter = Adapter.load(rma.path)
    observe_all(adapter, parity_rollout(rma.policy, 5, seed=4))
    state = adapter.save_state(tmp_path / "state.npz")
    restored = Adapter.load(rma.path)
    restored.load_state(state)
    assert np.array_equal(restored.context, adapter.context) and len(restored.buffer) == 5
    assert np.array_equal(restored.window, adapter.window)
    assert restored.mask.tolist() == [0.0] * 3 + [1.0] * 5
    nxt = parity_rollout(rma.policy, 1, seed=9)[0]
    restored.observe(*nxt)
    adapter.observe(*nxt)
    assert np.abs(restored.context - adapter.context).max() == 0
    with pytest.raises(ValueError, match="restore_params: context is float32"):
        restored.restore_params({**restored.params, CONTEXT: np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="mask entries must be 0 or 1"):
        restored.restore_params({**restored.params, MASK: np.full(8, 0.5, np.float32)})
    with pytest.raises(ValueError, match="'window' is missing"):
        restored.restore_params({CONTEXT: restored.context, MASK: restored.mask})
    bad = dict(np.load(state))
    bad["param:" + MASK] = np.full(8, 2.0, np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(StateError, match="mask entries must be 0 or 1"):
        restored.load_state(tmp_path / "bad.npz")
    assert restored.mask.tolist() == [0.0] * 2 + [1.0] * 6  # unchanged by the refused load
    assert WINDOW in restored.params


def test_greedy_episodes_update_the_history_online(rma) -> None:
    adapter = Adapter.load(rma.path)
    greedy_return(adapter, FakeCartPole(), episodes=1, seed=0, max_episode_steps=5)
    assert adapter.mask.sum() == 5 and len(adapter.buffer) == 0


def test_run_rounds_adapts_a_history_bundle_on_a_robot(rma) -> None:
    adapter = Adapter.load(rma.path, capacity=40)
    empty = adapter.context.copy()
    results = run_rounds(adapter, FakeCartPole(), rounds=2, support=20, steps=1, seed=0)
    assert [r.round for r in results] == [0, 1, 2]
    assert all(r.report.accepted and r.report.n_train == 8 for r in results[1:])
    assert results[2].report.n_transitions == 40
    assert adapter.mask.sum() == 8 and np.abs(adapter.context - empty).max() > 1e-4


def test_robometa_deploy_adapt_runs_a_history_bundle(rma, capsys) -> None:
    capsys.readouterr()
    args = ["adapt", "--bundle", str(rma.path), "--sample-test-task", "0", "--rounds", "1"]
    assert deploy_main([*args, "--support", "20", "--eval-episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "a history bundle; adapts a 3-d extrinsics vector history.onnx estimates" in out
    assert deploy_main(["info", "--bundle", str(rma.path)]) == 0
    assert "kind        history" in capsys.readouterr().out.splitlines()
