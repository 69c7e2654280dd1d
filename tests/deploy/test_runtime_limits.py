"""Every count has a documented maximum, nothing is coerced, and a saved state or a graph
output that ``observe`` would have refused is refused too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from robometa.deploy import Adapter, BundleError, StateError
from robometa.deploy.bundle import MANIFEST_FILE, POLICY_GRAPH
from robometa.deploy.runtime import (
    MAX_ADAPT_STEPS,
    MAX_CAPACITY,
    MAX_THREADS,
    TransitionBuffer,
)

Z = np.zeros(4, np.float32)


def fill(adapter: Adapter, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    obs = (rng.normal(size=(n, 4)) * [0.5, 1.0, 0.1, 1.0]).astype(np.float32)
    for i in range(n):
        assert adapter.observe(obs[i], int(rng.integers(3)), 1.0, obs[i] * 0.9, i % 17 == 16)


class TestObserveAsStored:
    """``observe`` judges a reward as the float32 it would store and train on."""

    @pytest.mark.parametrize(
        "reward", [1e39, -1e39, 10**400, -(10**400), np.float64(3.5e38), 2.0**128 - 2.0**103]
    )
    def test_rewards_beyond_float32_are_rejected_not_stored_as_inf(self, cavia, reward) -> None:
        adapter = Adapter.load(cavia.path)
        assert adapter.observe(Z, 1, reward, Z, False) is False
        assert adapter.rejected == {"non_finite_reward": 1} and len(adapter.buffer) == 0

    @pytest.mark.parametrize("reward", [float(np.finfo(np.float32).max), -(2**100), 10**38])
    def test_the_largest_float32_rewards_are_stored_finite(self, cavia, reward) -> None:
        adapter = Adapter.load(cavia.path)
        assert adapter.observe(Z, 1, reward, Z, False) is True
        assert np.isfinite(adapter.buffer.ordered().reward).all()

    @pytest.mark.parametrize("terminated", [10**400, -(10**400), 2.0**70])
    def test_huge_terminated_is_rejected_not_an_overflow(self, cavia, terminated) -> None:
        adapter = Adapter.load(cavia.path)
        assert adapter.observe(Z, 1, 1.0, Z, terminated) is False
        assert adapter.rejected == {"bad_terminated": 1}

    def test_huge_integer_actions_are_out_of_range(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        assert adapter.observe(Z, 10**400, 1.0, Z, False) is False
        assert adapter.rejected == {"action_out_of_range": 1}


class TestAdaptSteps:
    @pytest.mark.parametrize("steps", [2.7, 3.0, "3", True, np.float64(2.0), np.bool_(True)])
    def test_steps_must_be_an_int_not_coerced(self, cavia, steps) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 20)
        with pytest.raises(
            TypeError, match=r"steps must be an integer in \[0, 10000\] \(MAX_ADAPT_STEPS\), got"
        ):
            adapter.adapt(steps)
        assert adapter.params["context"] is adapter.meta_params["context"]

    @pytest.mark.parametrize("steps", [MAX_ADAPT_STEPS + 1, 10**9, -1])
    def test_steps_beyond_the_maximum_raise_before_any_work(self, cavia, steps: int) -> None:
        # An empty buffer: today's code returns "only 0 transitions" instead of refusing.
        adapter = Adapter.load(cavia.path)
        with pytest.raises(ValueError, match=rf"MAX_ADAPT_STEPS\), got {steps}$"):
            adapter.adapt(steps)

    def test_numpy_integer_steps_are_counts(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 20)
        assert adapter.adapt(np.int64(2)).steps == 2
        assert type(adapter.adapt(np.int32(1)).steps) is int

    def test_from_meta_must_be_a_bool(self, cavia) -> None:
        adapter = Adapter.load(cavia.path)
        fill(adapter, 20)
        with pytest.raises(TypeError, match="from_meta must be True, False or None, got str"):
            adapter.adapt(1, from_meta="no")


def _edited_inner(edited_bundle, source: Path, **changes) -> Path:
    inner = json.loads((source / MANIFEST_FILE).read_text())["inner"]
    return edited_bundle(source, manifest={"inner": {**inner, **changes}})


class TestManifestCounts:
    def test_inner_steps_beyond_the_maximum_are_refused_at_load(self, cavia, edited_bundle) -> None:
        path = _edited_inner(edited_bundle, cavia.path, steps=10**12)
        with pytest.raises(BundleError, match=r"manifest.json: inner.steps"):
            Adapter.load(path)

    def test_support_size_beyond_the_maximum_is_refused_as_capacity(
        self, cavia, edited_bundle
    ) -> None:
        path = _edited_inner(edited_bundle, cavia.path, support_size=10**12)
        with pytest.raises(BundleError, match=r"manifest.json: inner.support_size"):
            Adapter.load(path)


class TestConstructorArguments:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"capacity": 0}, ValueError, r"capacity must be an integer in \[1, 1000000\] "),
            ({"capacity": -3}, ValueError, r"\(MAX_CAPACITY\), got -3"),
            ({"capacity": MAX_CAPACITY + 1}, ValueError, r"\(MAX_CAPACITY\), got 1000001"),
            ({"capacity": 40.0}, TypeError, r"capacity must be an integer .* got float 40.0"),
            ({"capacity": True}, TypeError, r"capacity .* got bool True"),
            ({"capacity": "40"}, TypeError, r"capacity .* got str '40'"),
            ({"min_transitions": 0}, ValueError, r"min_transitions .* \[1, 1000000\] .* got 0"),
            ({"min_transitions": 2.5}, TypeError, r"min_transitions .* got float"),
            ({"threads": 0}, ValueError, r"threads must be an integer in \[1, 256\] "),
            ({"threads": MAX_THREADS + 1}, ValueError, r"\(MAX_THREADS\), got 257"),
            ({"threads": True}, TypeError, r"threads .* got bool"),
            ({"holdout_fraction": "0.2"}, TypeError, r"holdout_fraction must be a number"),
            ({"holdout_fraction": math.nan}, ValueError, r"holdout_fraction .* \[0.0, 0.5\]"),
            ({"tolerance": -0.1}, ValueError, r"tolerance must be a number in \[0.0, inf\]"),
            ({"tolerance": True}, TypeError, r"tolerance .* got bool"),
            ({"max_update_norm": 0.0}, ValueError, r"max_update_norm .* \(0.0, inf\], got 0.0"),
            ({"max_update_norm": "1"}, TypeError, r"max_update_norm .* got str"),
        ],
    )
    def test_bad_arguments_name_the_argument_value_and_range(
        self, cavia, kwargs, error, message
    ) -> None:
        with pytest.raises(error, match=message):
            Adapter.load(cavia.path, **kwargs)

    def test_capacity_none_is_the_support_size_and_numpy_ints_count(self, cavia) -> None:
        assert Adapter.load(cavia.path).buffer.capacity == 64  # the manifest's support_size
        assert Adapter.load(cavia.path, capacity=np.int64(7)).buffer.capacity == 7

    def test_the_ring_buffer_checks_its_capacity(self) -> None:
        with pytest.raises(ValueError, match="MAX_CAPACITY"):
            TransitionBuffer(0, 4)
        with pytest.raises(TypeError, match="got float"):
            TransitionBuffer(5.0, 4)


class TestLoadStateChecksTheBuffer:
    """A saved state is held to ``observe``'s rules: nothing it would have refused gets in
    (today action 99 loads, then ``adapt`` dies inside onnxruntime)."""

    @pytest.mark.parametrize(
        ("key", "change", "message"),
        [
            ("buffer:action", lambda a: _at(a, 3, 99), r"buffer:action\[3\] is 99: outside"),
            ("buffer:action", lambda a: _at(a, 0, -1), r"buffer:action\[0\] is -1"),
            ("buffer:reward", lambda a: _at(a, 5, np.nan), r"buffer:reward\[5\] is nan"),
            ("buffer:reward", lambda a: _at(a, 5, np.inf), r"buffer:reward\[5\] is inf"),
            ("buffer:obs", lambda a: _at(a, (2, 1), np.inf), r"buffer:obs\[2\] .* NaN or inf"),
            ("buffer:next_obs", lambda a: _at(a, (4, 0), 100.0), r"next_obs\[4\] .* bounds"),
            ("buffer:terminated", lambda a: _at(a, 1, 0.5), r"terminated\[1\] is 0.5"),
            ("rejected:action_out_of_range", lambda a: np.int64(-2), r"non-negative integer"),
            ("rejected:action_out_of_range", lambda a: np.float64(1.5), r"non-negative integer"),
            ("rejected:bogus", lambda a: np.int64(1), r"unexpected keys \['rejected:bogus'\]"),
            ("param:other", lambda a: np.zeros(3, np.float32), r"unexpected keys"),
            ("state_format", lambda a: np.asarray("1"), r"state_format .* not supported"),
            ("bundle_identity", lambda a: np.asarray(7), r"bundle_identity must be a string"),
        ],
    )
    def test_bad_entries_are_refused_and_nothing_changes(
        self, cavia, tmp_path: Path, key: str, change, message: str
    ) -> None:
        adapter = Adapter.load(cavia.path, tolerance=math.inf)
        fill(adapter, 30)
        adapter.observe(Z, 9, 1.0, Z, False)
        assert adapter.adapt(2).accepted
        path = adapter.save_state(tmp_path / "state.npz")
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays[key] = change(arrays.get(key))
        np.savez(path, **arrays)
        fresh = Adapter.load(cavia.path)
        fill(fresh, 12, seed=5)
        before = fresh.buffer.ordered()
        with pytest.raises(StateError, match=message):
            fresh.load_state(path)
        assert fresh.params["context"] is fresh.meta_params["context"]
        for a, b in zip(fresh.buffer.ordered(), before, strict=True):
            np.testing.assert_array_equal(a, b)
        assert fresh.rejected == {}
        assert fresh.adapt(1).n_transitions == 12  # still adapts on its own buffer


def _at(array: np.ndarray, index, value) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


class TestPolicyOutput:
    def test_an_action_outside_the_action_space_is_an_error(
        self, cavia, edited_bundle, tmp_path
    ) -> None:
        """A policy.onnx whose ``action`` is off by n_actions once the cart is right of 0.5 m
        (so a load-time probe at zero observations passes) must not drive a robot."""
        import shutil

        import onnx
        from onnx import TensorProto, helper

        path = tmp_path / "shifted"
        shutil.copytree(cavia.path, path)
        model = onnx.load(path / POLICY_GRAPH)
        graph = model.graph
        producer = next(n for n in graph.node if "action" in n.output)
        producer.output[list(producer.output).index("action")] = "action_unshifted"
        graph.initializer.extend(
            [
                helper.make_tensor("column", TensorProto.INT64, [], [0]),
                helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
                helper.make_tensor("n_actions", TensorProto.INT64, [], [3]),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Gather", ["obs", "column"], ["cart_x"], axis=1),
                helper.make_node("Greater", ["cart_x", "half"], ["right"]),
                helper.make_node("Cast", ["right"], ["right_int"], to=TensorProto.INT64),
                helper.make_node("Mul", ["right_int", "n_actions"], ["shift"]),
                helper.make_node("Add", ["action_unshifted", "shift"], ["action"]),
            ]
        )
        onnx.save(model, path / POLICY_GRAPH)
        adapter = Adapter.load(edited_bundle(path))  # a rehashed copy
        assert 0 <= adapter.act(Z) < 3
        with pytest.raises(BundleError, match=r"policy.onnx: output 'action' is [345], outside"):
            adapter.act(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
