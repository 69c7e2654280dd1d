"""Property-based tests: no input, however malformed, gets past the runtime's checks, and no
sequence of calls breaks an adapter's invariants."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from robometa.deploy import Adapter, BundleError, StateError, Transitions
from robometa.deploy.bundle import ENV_ID_PATTERN, MANIFEST_FILE
from robometa.deploy.runtime import MAX_ADAPT_STEPS

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
    """Whether the bundle format allows ``value`` at ``where`` (deploy/bundle.py's rules)."""
    if where == ("env_id",):
        return isinstance(value, str) and bool(ENV_ID_PATTERN.fullmatch(value))
    if where == ("discount",):
        return type(value) in (int, float) and 0 <= value <= 1
    if where == ("inner", "steps"):
        return type(value) is int and 0 <= value <= 1000
    if where == ("inner", "support_size"):
        return type(value) is int and 1 <= value <= 10**6
    return False


# ---------------------------------------------------------------------- the adapter's life
#
# A state machine drives one adapter through random sequences of everything a control loop
# does to it (act, observe, adapt, save, load, reset, restore an earlier snapshot, load a
# damaged state) and checks after every step that its parameters are finite, its buffer holds
# only what observe would accept, and that a rolled-back or refused call changed nothing.

MACHINE_CAPACITY = 12
MACHINE_SETTINGS = settings(
    max_examples=1000,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
step_counts = st.one_of(
    st.integers(0, 3),
    st.none(),
    st.sampled_from([-1, MAX_ADAPT_STEPS + 1, 10**9, 2.7, 3.0, "3", True, np.float64(1)]),
)
plausible_obs = hnp.arrays(np.float32, 4, elements=st.floats(-1, 1, width=32))
plausible = st.tuples(
    plausible_obs, st.integers(0, 2), st.floats(-2, 2), plausible_obs, st.booleans()
)
damages = st.sampled_from(
    [
        ("buffer:action", 99),
        ("buffer:reward", math.nan),
        ("buffer:obs", math.inf),
        ("buffer:next_obs", 1e3),
        ("buffer:terminated", 0.5),
        ("rejected:non_finite_obs", -1),
        ("param:context", math.nan),
        ("truncate", None),
    ]
)


class AdapterLife(RuleBasedStateMachine):
    def __init__(self, adapters: dict[str, Adapter], directory: Path) -> None:
        super().__init__()
        self.adapters, self.directory = adapters, directory
        self.adapter = next(iter(adapters.values()))
        self.saved: tuple[Path, dict, Transitions, dict] | None = None
        self.snapshots: list[dict[str, np.ndarray]] = []

    @initialize(
        which=st.sampled_from(["calm", "wild"]),
        batch=st.lists(plausible, max_size=MACHINE_CAPACITY),
    )
    def start(self, which: str, batch) -> None:
        """A fresh adapter (the shared ones, reset) with some valid transitions buffered."""
        self.adapter = self.adapters[which]
        self.adapter.reset()
        self.snapshots.append(self.adapter.params)
        assert all(self.adapter.observe(*t) for t in batch)

    # -------------------------------------------------------------- rules

    @rule(obs=observations)
    def act(self, obs) -> None:
        try:
            action = self.adapter.act(obs)
        except ValueError as err:
            assert "obs" in str(err)
        else:
            assert type(action) is int and 0 <= action < self.adapter.n_actions

    @rule(t=transitions)
    def observe(self, t) -> None:
        n, rejected = len(self.adapter.buffer), sum(self.adapter.rejected.values())
        stored = self.adapter.observe(*t)
        if stored:
            assert len(self.adapter.buffer) == min(n + 1, MACHINE_CAPACITY)
        else:
            assert len(self.adapter.buffer) == n
            assert sum(self.adapter.rejected.values()) == rejected + 1

    @rule(batch=st.lists(plausible, min_size=1, max_size=MACHINE_CAPACITY))
    def observe_plausible(self, batch) -> None:
        """Enough valid transitions for adapt to run (the random ones are mostly refused)."""
        n = len(self.adapter.buffer)
        assert all(self.adapter.observe(*t) for t in batch)
        assert len(self.adapter.buffer) == min(n + len(batch), MACHINE_CAPACITY)

    @rule(steps=step_counts, from_meta=st.sampled_from([None, True, False]))
    def adapt(self, steps, from_meta) -> None:
        before = self.adapter.params
        try:
            report = self.adapter.adapt(steps, from_meta=from_meta)
        except (TypeError, ValueError) as err:
            assert "steps must be an integer in [0, 10000] (MAX_ADAPT_STEPS)" in str(err)
            assert isinstance(steps, (bool, float, str, np.floating)) or not (
                0 <= steps <= MAX_ADAPT_STEPS
            )
            self.assert_unchanged(before)
            return
        assert steps is None or (type(steps) is int and 0 <= steps <= MAX_ADAPT_STEPS), steps
        assert report.steps == (self.adapter.default_steps if steps is None else steps)
        if report.accepted:
            self.snapshots.append(self.adapter.params)
        else:
            self.assert_unchanged(before)  # a rollback never changes the parameters

    @rule()
    def save(self) -> None:
        path = self.adapter.save_state(self.directory / "state.npz")
        self.saved = (
            path,
            self.adapter.params,
            self.adapter.buffer.ordered(),
            self.adapter.rejected,
        )

    @precondition(lambda self: self.saved is not None)
    @rule()
    def load(self) -> None:
        path, params, data, rejected = self.saved
        self.adapter.load_state(path)
        for k, v in params.items():
            np.testing.assert_array_equal(self.adapter.params[k], v)
        for a, b in zip(self.adapter.buffer.ordered(), data, strict=True):
            np.testing.assert_array_equal(a, b)
        assert self.adapter.rejected == rejected

    @precondition(lambda self: self.saved is not None)
    @rule(damage=damages)
    def load_damaged(self, damage) -> None:
        key, value = damage
        source = self.saved[0]
        damaged = self.directory / "damaged.npz"
        if key == "truncate":
            damaged.write_bytes(source.read_bytes()[:300])
        else:
            with np.load(source) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if key.startswith("rejected:"):
                arrays[key] = np.asarray(value, np.int64)
            elif arrays[key].size == 0:
                return  # an empty buffer has no entry to damage
            else:
                arrays[key] = arrays[key].copy()
                arrays[key].flat[0] = value
            np.savez(damaged, **arrays)
        before, data, rejected = (
            self.adapter.params,
            self.adapter.buffer.ordered(),
            self.adapter.rejected,
        )
        with pytest.raises(StateError, match="damaged.npz"):
            self.adapter.load_state(damaged)
        self.assert_unchanged(before)
        for a, b in zip(self.adapter.buffer.ordered(), data, strict=True):
            np.testing.assert_array_equal(a, b)
        assert self.adapter.rejected == rejected

    @rule()
    def reset(self) -> None:
        self.adapter.reset()
        assert len(self.adapter.buffer) == 0 and self.adapter.rejected == {}
        for k, v in self.adapter.params.items():
            assert v is self.adapter.meta_params[k]

    @rule(data=st.data())
    def restore(self, data) -> None:
        snapshot = data.draw(st.sampled_from(self.snapshots))
        self.adapter.restore_params(snapshot)
        for k, v in snapshot.items():
            np.testing.assert_array_equal(self.adapter.params[k], v)

    # -------------------------------------------------------------- invariants

    def assert_unchanged(self, before: dict[str, np.ndarray]) -> None:
        for k, v in self.adapter.params.items():
            assert v is before[k], f"{k} changed"

    @invariant()
    def parameters_are_finite(self) -> None:
        meta = self.adapter.meta_params
        for k, v in self.adapter.params.items():
            assert v.dtype == np.float32 and v.shape == meta[k].shape
            assert np.isfinite(v).all()
            if k not in self.adapter.adapted:
                np.testing.assert_array_equal(v, meta[k])

    @invariant()
    def buffer_is_finite_and_in_range(self) -> None:
        a = self.adapter
        assert len(a.buffer) <= MACHINE_CAPACITY
        data = a.buffer.ordered()
        for obs in (data.obs, data.next_obs):
            assert np.isfinite(obs).all()
            assert (obs >= a.obs_low).all() and (obs <= a.obs_high).all()
        assert np.isfinite(data.reward).all()
        assert ((data.action >= 0) & (data.action < a.n_actions)).all()
        assert set(np.unique(data.terminated)) <= {0.0, 1.0}
        assert all(count >= 1 for count in a.rejected.values())


@pytest.mark.slow
def test_an_adapters_life_keeps_its_invariants(cavia, edited_bundle) -> None:
    """1000 random lives of up to 10 steps, on a calm adapter and on a wild one (a huge inner
    learning rate, so many adaptations are rolled back)."""
    wild = edited_bundle(cavia.path, lrs={"context": np.float32(1e4)})
    common = {"capacity": MACHINE_CAPACITY, "min_transitions": 2}
    adapters = {
        "calm": Adapter.load(cavia.path, **common),
        "wild": Adapter.load(wild, max_update_norm=None, tolerance=0.0, **common),
    }
    # State files on tmpfs where there is one: save_state's fsync costs ~15 ms on a disk.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as directory:
        run_state_machine_as_test(
            lambda: AdapterLife(adapters, Path(directory)), settings=MACHINE_SETTINGS
        )
