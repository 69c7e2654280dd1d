"""Property-based tests: no input, however malformed, gets past the runtime's checks."""

from __future__ import annotations

import json
import math
import shutil

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robometa.deploy import Adapter, BundleError, StateError
from robometa.deploy.bundle import MANIFEST_FILE

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

weird_floats = st.one_of(
    st.floats(-3, 3, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf, 100.0, -1e30, 1e300]),
)
observations = st.one_of(
    hnp.arrays(
        dtype=st.sampled_from(
            [np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5),
    ),
    st.lists(
        st.one_of(weird_floats, st.integers(-5, 5), st.none(), st.text(max_size=2)), max_size=6
    ),
    st.lists(weird_floats, min_size=4, max_size=4),
    st.none(),
    st.text(max_size=4),
)
# Transitions: mostly plausible, with every kind of bad value mixed in.
obs4 = st.lists(weird_floats, min_size=4, max_size=4).map(lambda v: np.array(v, np.float64))
actions = st.one_of(
    st.integers(-2, 4), st.floats(allow_nan=True), st.booleans(), st.none(), st.just("1")
)
rewards = st.one_of(weird_floats, st.integers(-3, 3), st.none(), st.just("r"), st.booleans())
terminations = st.one_of(st.booleans(), st.integers(-1, 2), st.floats(), st.just("no"))
transitions = st.tuples(obs4, actions, rewards, obs4, terminations)


@pytest.fixture(scope="module")
def adapter(cavia) -> Adapter:
    return Adapter.load(cavia.path)


@SETTINGS
@given(obs=observations)
def test_act_returns_a_valid_action_or_raises_value_error(adapter: Adapter, obs) -> None:
    try:
        action = adapter.act(obs)
    except ValueError as err:
        assert "obs" in str(err)
        return
    array = np.asarray(obs)
    assert array.shape == (4,) and array.dtype.kind in "fiu"
    assert np.isfinite(array.astype(np.float32)).all()
    assert type(action) is int and 0 <= action < 3
    assert action == int(np.argmax(adapter.q_values(array)))


@SETTINGS
@given(batch=st.lists(transitions, min_size=0, max_size=40), steps=st.integers(0, 3))
def test_bad_transitions_never_reach_the_buffer_or_the_parameters(cavia, batch, steps: int) -> None:
    adapter = Adapter.load(cavia.path, min_transitions=2)
    accepted = 0
    for t in batch:
        accepted += adapter.observe(*t)
    assert accepted + sum(adapter.rejected.values()) == len(batch)
    assert len(adapter.buffer) == accepted
    data = adapter.buffer.ordered()
    for obs in (data.obs, data.next_obs):
        assert np.isfinite(obs).all()
        assert (obs >= adapter.obs_low).all() and (obs <= adapter.obs_high).all()
    assert np.isfinite(data.reward).all()
    assert ((data.action >= 0) & (data.action < 3)).all()
    assert set(np.unique(data.terminated)) <= {0.0, 1.0}
    before = adapter.params
    report = adapter.adapt(steps)
    assert report.n_rejected == len(batch) - accepted
    assert all(np.isfinite(v).all() for v in adapter.params.values())
    if not report.accepted:
        for k, v in adapter.params.items():
            assert v is before[k]


@SETTINGS
@given(data=st.binary(max_size=400))
def test_garbage_state_files_are_refused(cavia, tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("state") / "state.npz"
    path.write_bytes(data)
    adapter = Adapter.load(cavia.path)
    with pytest.raises(StateError, match="state.npz"):
        adapter.load_state(path)
    assert adapter.params["context"] is adapter.meta_params["context"]


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.floats(allow_nan=False),
        st.text(max_size=3),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
manifest_paths = st.sampled_from(
    [
        ("env_id",),
        ("observation",),
        ("observation", "shape"),
        ("observation", "low"),
        ("observation", "names"),
        ("action", "n"),
        ("discount",),
        ("inner",),
        ("inner", "adapted"),
        ("inner", "steps"),
        ("inner", "support_size"),
        ("parameters",),
        ("parameters", "context"),
        ("files",),
        ("files", "policy.onnx"),
        ("format_version",),
    ]
)


@SETTINGS
@given(where=manifest_paths, value=json_values)
def test_tampered_manifests_fail_with_bundle_error(cavia, tmp_path_factory, where, value) -> None:
    root = tmp_path_factory.mktemp("tampered") / "bundle"
    shutil.copytree(cavia.path, root)
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    node = manifest
    for key in where[:-1]:
        node = node[key]
    original = node[where[-1]]
    node[where[-1]] = value
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    try:
        Adapter.load(root)
    except BundleError as err:
        assert str(root) in str(err)
    else:
        # Accepted only when the value is valid for that key (the files' hashes still hold).
        assert json.dumps(value) == json.dumps(original) or still_valid(where, value), (
            f"manifest {'.'.join(where)} = {value!r} was accepted"
        )


def still_valid(where: tuple[str, ...], value: object) -> bool:
    if where == ("env_id",):
        return isinstance(value, str) and bool(value)
    if where in {("inner", "steps"), ("inner", "support_size")}:
        return type(value) is int and value >= 0
    return False
