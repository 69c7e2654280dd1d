"""The Adapter: acting matches torch, bad input is refused, the guard holds, state persists."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from robometa.deploy import Adapter, StateError
from robometa.deploy.runtime import TransitionBuffer

from robometa.adaptation import Batch, adapt
from robometa.bundle import adaptation_of
from robometa.networks import q_values

OBS_DIM, N_ACTIONS = 4, 3


def random_obs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, OBS_DIM)) * [0.5, 1.0, 0.1, 1.0]).astype(np.float32)


def fill(adapter: Adapter, n: int, seed: int = 0) -> None:
    """``n`` plausible transitions (next state a small step away)."""
    rng = np.random.default_rng(seed)
    obs = random_obs(n, seed)
    nxt = obs + (0.05 * rng.normal(size=obs.shape)).astype(np.float32)
    for i in range(n):
        ok = adapter.observe(obs[i], int(rng.integers(N_ACTIONS)), 1.0, nxt[i], i % 17 == 16)
        assert ok


def torch_q(policy, params: dict[str, np.ndarray], obs: np.ndarray) -> np.ndarray:
    p = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
    with torch.no_grad():
        return q_values(policy.net, p, torch.from_numpy(obs)).numpy()


class TestActing:
    @pytest.mark.parametrize("batch", [1, 3, 64])
    def test_q_values_match_torch(self, cavia, batch: int) -> None:
        adapter = Adapter.load(cavia.path)
        obs = random_obs(batch, seed=batch)
        expected = torch_q(cavia.policy, adapter.meta_params, obs)
        np.testing.assert_allclose(adapter.q_values(obs), expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(adapter.q_values(obs[0]), expected[0], atol=1e-5, rtol=0)

    def test_greedy_actions_agree_with_torch(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        obs = random_obs(300, seed=1)
        expected = torch_q(cavia.policy, adapter.meta_params, obs).argmax(axis=1)
        actions = [adapter.act(o) for o in obs]
        assert actions == expected.tolist()
        assert len(set(actions)) > 1, "a degenerate policy would make this test vacuous"
        assert all(type(a) is int for a in actions)

    def test_accepts_lists_and_float64(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        obs = random_obs(1)[0]
        assert adapter.act(obs.tolist()) == adapter.act(obs.astype(np.float64)) == adapter.act(obs)

    @pytest.mark.parametrize(
        "obs",
        [np.zeros(5, np.float32), np.zeros((1, 4), np.float32), np.zeros(3), 1.0, []],
        ids=["too-long", "batched", "too-short", "scalar", "empty"],
    )
    def test_wrong_shape_is_named(self, cavia, obs) -> None:
        with pytest.raises(ValueError, match=r"obs has shape .* expected \(4,\)"):
            Adapter.load(cavia.path).act(obs)

    @pytest.mark.parametrize(
        "obs",
        [np.zeros(4, complex), np.array(["a"] * 4), np.zeros(4, bool), [None] * 4],
        ids=["complex", "str", "bool", "object"],
    )
    def test_wrong_dtype_is_named(self, cavia, obs) -> None:
        with pytest.raises(ValueError, match="dtype"):
            Adapter.load(cavia.path).act(obs)

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_non_finite_entry_is_named(self, cavia, bad: float) -> None:
        adapter = Adapter.load(cavia.path)
        obs = np.zeros(4, np.float32)
        obs[2] = bad
        with pytest.raises(ValueError, match=r"obs\[2\] \(pole_angle\) is .*must be finite"):
            adapter.act(obs)
        with pytest.raises(ValueError, match=r"obs\[1\]\[2\] \(pole_angle\)"):
            adapter.q_values(np.stack([np.zeros(4, np.float32), obs]))
        assert adapter.act(np.zeros(4, np.float32)) == adapter.q_values(np.zeros(4)).argmax()


class TestObserve:
    def test_good_transitions_are_stored(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 12)
        assert len(adapter.buffer) == 12 and adapter.rejected == {}

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"reward": math.nan}, "non_finite_reward"),
            ({"reward": math.inf}, "non_finite_reward"),
            ({"reward": "1.0"}, "reward_not_number"),
            ({"action": 3}, "action_out_of_range"),
            ({"action": -1}, "action_out_of_range"),
            ({"action": 1.5}, "action_not_integer"),
            ({"action": True}, "action_not_integer"),
            ({"action": None}, "action_not_integer"),
            ({"obs": [0.0, math.nan, 0.0, 0.0]}, "non_finite_obs"),
            ({"next_obs": [0.0, 0.0, 0.0, math.inf]}, "non_finite_obs"),
            ({"obs": [100.0, 0.0, 0.0, 0.0]}, "obs_out_of_range"),
            ({"terminated": 2}, "bad_terminated"),
            ({"terminated": "yes"}, "bad_terminated"),
        ],
    )
    def test_bad_transitions_are_rejected_and_counted(self, cavia, change, reason) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 10)
        good = {
            "obs": np.zeros(4, np.float32),
            "action": 1,
            "reward": 1.0,
            "next_obs": np.zeros(4, np.float32),
            "terminated": False,
        }
        assert adapter.observe(**{**good, **change}) is False
        assert adapter.observe(**{**good, **change}) is False
        assert adapter.rejected == {reason: 2}
        assert len(adapter.buffer) == 10
        report = adapter.adapt(1)
        assert report.n_rejected == 2 and report.rejected == {reason: 2}

    def test_numpy_scalars_are_accepted(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        z = np.zeros(4, np.float32)
        assert adapter.observe(z, np.int64(2), np.float32(0.5), z, np.bool_(True))
        assert adapter.observe(z, np.array(0), np.array(1.0), z, 1)

    def test_wrong_obs_shape_raises(self, cavia) -> None:
        with pytest.raises(ValueError, match=r"next_obs has shape \(3,\)"):
            Adapter.load(cavia.path).observe(np.zeros(4), 0, 1.0, np.zeros(3), False)

    def test_ring_buffer_keeps_the_newest(self) -> None:
        buf = TransitionBuffer(5, 2)
        for i in range(12):
            buf.add(np.full(2, i), i % 3, float(i), np.full(2, i + 1), 0.0)
        data = buf.ordered()
        assert len(buf) == 5
        assert data.reward.tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
        assert data.obs[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]


class TestAdapt:
    @pytest.mark.parametrize("which", ["cavia", "finetune"])
    def test_unguarded_steps_match_torch(self, which: str, request) -> None:
        built = request.getfixturevalue(which)
        adapter = Adapter.load(
            built.path, holdout_fraction=0.0, max_update_norm=None, tolerance=math.inf
        )
        fill(adapter, 40)
        report = adapter.adapt(steps=4)
        assert report.accepted and report.steps == 4 and report.n_train == 40
        data = adapter.buffer.ordered()
        lrs, inner, _ = adaptation_of(built.policy)
        batch = Batch(*(torch.from_numpy(a) for a in data))
        with torch.no_grad():
            expected, losses = adapt(
                built.policy.net, built.policy.params, lrs, batch, inner, steps=4
            )
        for name in adapter.adapted:
            np.testing.assert_allclose(adapter.params[name], expected[name], atol=1e-4, rtol=0)
        assert report.train_loss_before == pytest.approx(losses[0], abs=1e-5)
        obs = random_obs(20, seed=5)
        np.testing.assert_allclose(
            adapter.q_values(obs), torch_q(built.policy, adapter.params, obs), atol=1e-5
        )

    def test_each_round_restarts_from_the_meta_parameters(self, cavia) -> None:
        # A meta-learned inner loop starts at the meta-parameters on fresh support data, in
        # training and on the robot: a second round equals a first round on the new buffer.
        adapter = Adapter.load(
            cavia.path, holdout_fraction=0.0, max_update_norm=None, tolerance=math.inf
        )
        assert adapter.from_meta
        fill(adapter, 40, seed=1)
        adapter.adapt(steps=3)
        fill(adapter, adapter.buffer.capacity, seed=2)  # the buffer now holds only new data
        adapter.adapt(steps=3)
        fresh = Adapter.load(
            cavia.path, holdout_fraction=0.0, max_update_norm=None, tolerance=math.inf
        )
        fill(fresh, fresh.buffer.capacity, seed=2)
        fresh.adapt(steps=3)
        np.testing.assert_array_equal(adapter.params["context"], fresh.params["context"])
        # Continuing from the current parameters is still available.
        adapter.adapt(steps=3, from_meta=False)
        assert not np.array_equal(adapter.params["context"], fresh.params["context"])

    def test_acting_with_meta_is_scoped_to_the_block(self, cavia) -> None:
        adapter = Adapter.load(cavia.path, tolerance=math.inf)
        fill(adapter, 60)
        assert adapter.adapt(steps=3).accepted
        obs = random_obs(32, seed=3)
        adapted_q = adapter.q_values(obs)
        meta_q = torch_q(cavia.policy, adapter.meta_params, obs)
        assert not np.allclose(adapted_q, meta_q)
        adapted_context = adapter.params["context"].copy()
        with adapter.acting_with_meta():
            np.testing.assert_allclose(adapter.q_values(obs), meta_q, atol=1e-5)
            assert adapter.act(obs[0]) == int(np.argmax(meta_q[0]))
            # Only acting changes: the current parameters are still the adapted ones.
            np.testing.assert_array_equal(adapter.params["context"], adapted_context)
            with adapter.acting_with_meta():  # nested blocks restore the outer one
                pass
            np.testing.assert_allclose(adapter.q_values(obs), meta_q, atol=1e-5)
        np.testing.assert_array_equal(adapter.q_values(obs), adapted_q)
        assert adapter.act(obs[0]) == int(np.argmax(adapted_q[0]))
        with pytest.raises(RuntimeError), adapter.acting_with_meta():
            raise RuntimeError("the robot's driver failed")
        np.testing.assert_array_equal(adapter.q_values(obs), adapted_q)  # restored anyway
        with adapter.acting_with_meta():
            report = adapter.adapt(steps=1)  # an adaptation inside the block is kept
            one_step = adapter.params["context"].copy()
            np.testing.assert_allclose(adapter.q_values(obs), meta_q, atol=1e-5)  # still meta
        assert report.accepted
        # its guard compared against the adapted parameters, not the meta-parameters
        assert report.loss_before == pytest.approx(
            adapter.loss(
                {**adapter.meta_params, "context": adapted_context},
                adapter.split(adapter.buffer.ordered())[1],
            )
        )
        np.testing.assert_array_equal(adapter.params["context"], one_step)
        q = adapter.q_values(obs)
        assert not np.allclose(q, adapted_q) and not np.allclose(q, meta_q)

    def test_adapting_lowers_the_training_loss(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 60)
        report = adapter.adapt(steps=5)
        assert report.accepted and not report.rolled_back
        assert report.train_loss_after < report.train_loss_before
        assert report.n_train + report.n_holdout == 60 and report.n_holdout == 12
        assert not np.array_equal(adapter.params["context"], adapter.meta_params["context"])

    def test_too_few_transitions_changes_nothing(self, cavia) -> None:
        adapter = Adapter.load(cavia.path, min_transitions=10)
        fill(adapter, 9)
        report = adapter.adapt(3)
        assert not report.accepted and not report.rolled_back
        assert "only 9 transitions" in report.reason
        assert adapter.params["context"] is adapter.meta_params["context"]

    def test_huge_learning_rate_is_rolled_back(self, cavia, edited_bundle) -> None:
        path = edited_bundle(cavia.path, lrs={"context": np.float32(1e5)})
        adapter = Adapter.load(path, max_update_norm=None)
        fill(adapter, 60)
        before = {k: v.copy() for k, v in adapter.params.items()}
        action = adapter.act(np.zeros(4, np.float32))
        report = adapter.adapt(steps=3)
        assert report.rolled_back and not report.accepted
        assert "held-out loss rose" in report.reason or "non-finite" in report.reason
        for k, v in adapter.params.items():
            np.testing.assert_array_equal(v, before[k])
        assert adapter.act(np.zeros(4, np.float32)) == action

    def test_non_finite_parameters_are_rolled_back(self, finetune, edited_bundle) -> None:
        lrs = {k: np.float32(1e38) for k in finetune.policy.params}
        adapter = Adapter.load(edited_bundle(finetune.path, lrs=lrs), max_update_norm=None)
        fill(adapter, 40)
        report = adapter.adapt(steps=3)
        assert report.rolled_back
        assert "non-finite" in report.reason or "held-out loss became" in report.reason
        assert all(np.isfinite(v).all() for v in adapter.params.values())
        for k, v in adapter.params.items():
            np.testing.assert_array_equal(v, adapter.meta_params[k])

    def test_step_size_is_bounded(self, cavia, edited_bundle) -> None:
        path = edited_bundle(cavia.path, lrs={"context": np.float32(1e5)})
        adapter = Adapter.load(path, max_update_norm=0.01, tolerance=math.inf)
        fill(adapter, 60)
        report = adapter.adapt(steps=3)
        assert report.accepted and report.clipped_steps == 3
        change = adapter.params["context"] - adapter.meta_params["context"]
        assert 0 < np.linalg.norm(change) <= 3 * 0.01 + 1e-6

    def test_reset_restores_the_meta_parameters(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 60)
        adapter.observe(np.zeros(4), 7, 1.0, np.zeros(4), False)
        assert adapter.adapt(5).accepted
        adapter.reset()
        assert len(adapter.buffer) == 0 and adapter.rejected == {}
        for k, v in adapter.params.items():
            np.testing.assert_array_equal(v, adapter.meta_params[k])
        obs = random_obs(50, seed=9)
        expected = torch_q(cavia.policy, adapter.meta_params, obs).argmax(1)
        assert [adapter.act(o) for o in obs] == expected.tolist()

    def test_parameters_cannot_be_modified_in_place(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        with pytest.raises(ValueError, match="read-only"):
            adapter.params["context"][0] = 1.0


class TestState:
    def adapted(self, built) -> Adapter:
        adapter = Adapter.load(built.path)
        fill(adapter, 50)
        adapter.observe(np.zeros(4), 9, 1.0, np.zeros(4), False)
        assert adapter.adapt(3).accepted
        return adapter

    def test_round_trip(self, cavia, tmp_path: Path) -> None:
        adapter = self.adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        fresh = Adapter.load(cavia.path)
        fresh.load_state(path)
        for k in adapter.params:
            np.testing.assert_array_equal(fresh.params[k], adapter.params[k])
        for a, b in zip(fresh.buffer.ordered(), adapter.buffer.ordered(), strict=True):
            np.testing.assert_array_equal(a, b)
        assert fresh.rejected == adapter.rejected == {"action_out_of_range": 1}
        obs = random_obs(50, seed=2)
        assert [fresh.act(o) for o in obs] == [adapter.act(o) for o in obs]

    def test_interrupted_write_keeps_the_previous_state(
        self, cavia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        adapter = self.adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        saved = adapter.params["context"].copy()
        fill(adapter, 30, seed=4)
        assert adapter.adapt(3).accepted

        def power_cut(src, dst):
            raise OSError("power cut")

        monkeypatch.setattr(os, "replace", power_cut)
        with pytest.raises(OSError, match="power cut"):
            adapter.save_state(path)
        monkeypatch.undo()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]
        fresh = Adapter.load(cavia.path)
        fresh.load_state(path)
        np.testing.assert_array_equal(fresh.params["context"], saved)

    def test_state_of_another_bundle_is_refused(self, cavia, finetune, tmp_path: Path) -> None:
        path = self.adapted(cavia).save_state(tmp_path / "state.npz")
        other = Adapter.load(finetune.path)
        with pytest.raises(StateError, match="different bundle"):
            other.load_state(path)

    @pytest.mark.parametrize("damage", ["truncate", "nan-param", "missing-key", "no-file"])
    def test_bad_state_file_leaves_the_adapter_unchanged(
        self, cavia, tmp_path: Path, damage: str
    ) -> None:
        adapter = self.adapted(cavia)
        path = adapter.save_state(tmp_path / "state.npz")
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:200])
        elif damage == "nan-param":
            arrays["param:context"] = np.full_like(arrays["param:context"], np.nan)
            np.savez(path, **arrays)
        elif damage == "missing-key":
            del arrays["buffer:reward"]
            np.savez(path, **arrays)
        else:
            path.unlink()
        fresh = Adapter.load(cavia.path)
        fill(fresh, 10, seed=8)
        with pytest.raises(StateError, match=str(path.name)):
            fresh.load_state(path)
        assert len(fresh.buffer) == 10
        np.testing.assert_array_equal(fresh.params["context"], fresh.meta_params["context"])
