"""The ``history`` bundle kind (what the ``rma`` family exports) end to end: export with its
parity check, the reader's layout, the runtime's parity with torch over a rollout (extrinsics
and Q-values within 1e-5 after every history update), the empty window's own prior, reset,
saved state (only states the runtime can reach are restored), a non-finite estimate refused
and counted, ``run_rounds`` and ``robometa-deploy adapt``."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_robot import FakeCartPole
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE, Bundle
from robometa.deploy.cli import main as deploy_main
from robometa.deploy.history import (
    CONTEXT,
    HISTORY_GRAPH,
    MASK,
    NON_FINITE_CONTEXT,
    WINDOW,
    HistoryAdapter,
)
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
    # the empty window's extrinsics are its own prior, not the intercept of the others
    empty = rma.policy.params["history_prior"].numpy()
    assert np.abs(adapter.context - empty).max() <= TOLERANCE
    bias = rma.policy.params["history_out.bias"].numpy()
    assert np.abs(adapter.context - bias).max() > 1e-3
    assert "param:history_prior" in [i.name for i in adapter._history.get_inputs()]


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


def _reachable(adapter: HistoryAdapter, rollout: list) -> dict[str, np.ndarray]:
    observe_all(adapter, rollout)
    return {k: np.array(v) for k, v in adapter.params.items()}


def _unreachable(adapter: HistoryAdapter, good: dict[str, np.ndarray]) -> list:
    """(what is wrong, the state, the key the error names, the rest of its message): states
    no sequence of ``observe`` calls can give."""
    d, n = adapter.obs_dim, adapter.n_actions
    w, m = good[WINDOW], good[MASK]
    big = {**good, CONTEXT: np.full_like(good[CONTEXT], 1e8)}
    off = {**good, CONTEXT: good[CONTEXT] + np.float32(0.01)}
    huge_window = np.full_like(w, 1e5)
    holes = np.tile(np.array([1.0, 0.0], np.float32), len(m) // 2)
    padded = w.copy()
    padded[0] = 0.5  # a masked-out row (the state has 5 of 8 rows)
    multi = w.copy()
    multi[-1, d : d + n] = 1.0  # every action slot of the newest row set
    far = w.copy()
    far[-1, 0] = 10.0  # cart position beyond the bounds (4.8)
    jump = w.copy()
    jump[-1, d + n] = 9.0  # obs + (next_obs - obs) beyond them
    bounds = r"outside the observation bounds low \[-4.8"
    return [
        ("context 1e8", big, CONTEXT, r" is \[100000000.0, .*estimates .*within 0.0001 relative"),
        ("context off by 0.01", off, CONTEXT, r" is .*, but history.onnx estimates"),
        ("window 1e5", {**good, WINDOW: huge_window}, WINDOW, r"\[0\] is masked out .*all 0"),
        (
            "window 1e5, all valid",
            {**good, WINDOW: huge_window, MASK: np.ones_like(m)},
            WINDOW,
            r"\[0\] action slots \(columns 4..6\) is \[100000.0, .*exactly one 1 and 2 zeros",
        ),
        (
            "mask with holes",
            {**good, MASK: holes},
            MASK,
            r" is .*front-padded .*\[0.0\] \* 4 \+ \[1.0\] \* 4",
        ),
        ("padding not zero", {**good, WINDOW: padded}, WINDOW, r"\[0\] is masked out"),
        ("multi-hot action", {**good, WINDOW: multi}, WINDOW, r"\[7\] action slots .*one 1"),
        (
            "obs outside",
            {**good, WINDOW: far},
            WINDOW,
            r"\[7\] observation \(columns 0..3\) is \[10.0, .*" + bounds,
        ),
        ("obs + delta outside", {**good, WINDOW: jump}, WINDOW, r"\[7\] next_obs - obs .*it is"),
    ]


def test_restore_params_refuses_a_state_the_runtime_cannot_reach(rma) -> None:
    adapter = Adapter.load(rma.path)
    good = _reachable(adapter, parity_rollout(rma.policy, 5, seed=4))
    for what, state, key, message in _unreachable(adapter, good):
        with pytest.raises(ValueError, match="restore_params: " + key + message):
            adapter.restore_params(state)
        assert np.array_equal(adapter.context, good[CONTEXT]), what  # unchanged
        assert np.array_equal(adapter.window, good[WINDOW]), what
    adapter.restore_params(good)  # a reachable state still round-trips
    adapter.restore_params(adapter.meta_params)
    assert np.array_equal(adapter.context, adapter.meta_params[CONTEXT])


def test_load_state_refuses_a_state_the_runtime_cannot_reach(rma, tmp_path: Path) -> None:
    adapter = Adapter.load(rma.path)
    good = _reachable(adapter, parity_rollout(rma.policy, 5, seed=4))
    saved = dict(np.load(adapter.save_state(tmp_path / "state.npz")))
    fresh = Adapter.load(rma.path)
    for i, (what, state, key, message) in enumerate(_unreachable(adapter, good)):
        path = tmp_path / f"bad-{i}.npz"
        np.savez(path, **{**saved, **{"param:" + k: v for k, v in state.items()}})
        with pytest.raises(StateError, match=re.escape(f"{path}: param:{key}") + message):
            fresh.load_state(path)
        assert fresh.mask.sum() == 0 and len(fresh.buffer) == 0, what  # nothing changed
    fresh.load_state(tmp_path / "state.npz")
    assert np.array_equal(fresh.context, adapter.context) and len(fresh.buffer) == 5


def test_a_non_finite_estimate_is_refused_and_counted_never_silent(
    rma, monkeypatch, tmp_path: Path
) -> None:
    adapter = Adapter.load(rma.path)
    rollout = parity_rollout(rma.policy, 4, seed=6)
    observe_all(adapter, rollout[:2])
    before = {k: np.array(v) for k, v in adapter.params.items()}
    real = adapter.estimate
    monkeypatch.setattr(
        adapter, "estimate", lambda w, m: np.full(adapter.context_dim, np.nan, np.float32)
    )
    assert not adapter.observe(*rollout[2])  # not reported accepted
    assert not adapter.follow(*rollout[3])
    assert adapter.rejected == {NON_FINITE_CONTEXT: 2}
    assert len(adapter.buffer) == 2  # not buffered either
    for k, v in adapter.params.items():  # the window and context stay consistent
        assert np.array_equal(v, before[k]), k
    report = adapter.adapt()
    assert report.rolled_back and not report.accepted
    assert report.n_rejected == 2 and report.rejected == {NON_FINITE_CONTEXT: 2}
    restored = Adapter.load(rma.path)  # the count survives a saved state
    restored.load_state(adapter.save_state(tmp_path / "state.npz"))
    assert restored.rejected == {NON_FINITE_CONTEXT: 2} and len(restored.buffer) == 2
    monkeypatch.setattr(adapter, "estimate", real)
    assert adapter.observe(*rollout[2]) and adapter.mask.sum() == 3
