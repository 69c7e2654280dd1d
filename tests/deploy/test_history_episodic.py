"""Per-episode memory in the ``history`` runtime (``history.episodic``, what ``dr-history``
bundles declare): the manifest key and its check, ``begin_episode`` (the window empties, the
buffer stays), a terminal transition ending the episode, ``adapt`` reading the current
episode only, saved state, the loop telling the adapter when an episode starts (so a bundle's
greedy return is the harness's), and ``rma`` bundles unchanged."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_robot import FakeCartPole
from robometa.deploy import Adapter
from robometa.deploy.bundle import MANIFEST_FILE, BundleError
from robometa.deploy.history import CONTEXT, EPISODIC, MASK, WINDOW, HistoryAdapter
from robometa.deploy.loop import collect, greedy_return

from robometa.bundle import export_bundle
from robometa.bundle_dr_history import parity_rollout
from robometa.methods.dr_history import DRHistoryMethod, untrained_policy

LENGTH = 4


@pytest.fixture(scope="module")
def drh(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A random-weight dr-history policy and its bundle (window of 4, buffer of 40)."""
    policy = untrained_policy(seed=3, history=LENGTH, support_size=40)
    return policy, export_bundle(policy, tmp_path_factory.mktemp("bundles") / "dr-history")


def with_episodic(edit: Callable[..., Path], bundle: Path, value: object) -> Path:
    """A copy of ``bundle`` whose ``history.episodic`` is ``value`` (removed for ...)."""
    section = dict(json.loads((bundle / MANIFEST_FILE).read_text())["history"])
    section.pop(EPISODIC, None)
    if value is not ...:
        section[EPISODIC] = value
    return edit(bundle, manifest={"history": section})


def load(bundle: Path, **kwargs: object) -> HistoryAdapter:
    adapter = Adapter.load(bundle, **kwargs)
    assert isinstance(adapter, HistoryAdapter)
    return adapter


def episodes(policy: object, lengths: list[int], seed: int = 0) -> list[tuple]:
    """Consecutive synthetic transitions: episodes of ``lengths``, each ending terminal."""
    out: list[tuple] = []
    for i, n in enumerate(lengths):
        rollout = parity_rollout(policy, n, seed + i)
        rollout[-1] = (*rollout[-1][:4], True)
        out.extend(rollout)
    return out


def assert_empty(adapter: HistoryAdapter) -> None:
    assert not adapter.mask.any() and not adapter.window.any()
    np.testing.assert_array_equal(adapter.context, adapter.meta_params[CONTEXT])


# ---------------------------------------------------------------------- the manifest


def test_the_export_declares_episodic_and_rma_does_not(drh, rma) -> None:
    manifest = json.loads((drh[1] / MANIFEST_FILE).read_text())
    assert manifest["history"][EPISODIC] is True and load(drh[1]).episodic
    assert EPISODIC not in json.loads((rma.path / MANIFEST_FILE).read_text())["history"]
    assert load(rma.path).episodic is False
    assert "within each episode" in dict(HistoryAdapter.describe(load(drh[1]).bundle))["adapts"]


@pytest.mark.parametrize(("value", "expected"), [(..., False), (False, False), (True, True)])
def test_episodic_is_optional_and_defaults_to_false(drh, edited_bundle, value, expected) -> None:
    assert load(with_episodic(edited_bundle, drh[1], value)).episodic is expected


@pytest.mark.parametrize("value", ["true", 1, 0, None, [True], {"on": True}])
def test_a_non_boolean_episodic_is_refused_naming_key_value_file(drh, edited_bundle, value) -> None:
    bundle = with_episodic(edited_bundle, drh[1], value)
    with pytest.raises(BundleError) as err:
        Adapter.load(bundle)
    message = str(err.value)
    assert str(bundle / MANIFEST_FILE) in message
    assert f"history.episodic is {value!r}, expected true or false" in message


# ---------------------------------------------------------------------- the window


def test_begin_episode_empties_the_window_but_keeps_buffer_and_counts(drh) -> None:
    policy, bundle = drh
    adapter = load(bundle)
    for t in parity_rollout(policy, 6):
        assert adapter.observe(*t)
    obs, action, _, nxt, term = parity_rollout(policy, 1, seed=9)[0]
    assert not adapter.observe(obs, action, math.nan, nxt, term)  # counted, not stored
    assert adapter.mask.sum() == LENGTH and adapter.context.any()
    buffered, rejected = adapter.buffer.ordered(), dict(adapter.rejected)
    adapter.begin_episode()
    assert_empty(adapter)
    fresh = load(bundle)
    for key, value in fresh.params.items():
        np.testing.assert_array_equal(adapter.params[key], value)
    after = adapter.buffer.ordered()
    assert len(after.reward) == 6 and dict(adapter.rejected) == rejected
    for a, b in zip(after, buffered, strict=True):
        np.testing.assert_array_equal(a, b)
    # acting: the empty window's Q (the same as a fresh adapter's)
    np.testing.assert_array_equal(adapter.q_values(obs), fresh.q_values(obs))


def test_a_terminal_transition_ends_the_episode_observed_or_followed(drh) -> None:
    policy, bundle = drh
    adapter = load(bundle)
    first, second = episodes(policy, [3, 2])[:3], episodes(policy, [3, 2])[3:]
    for t in first[:-1]:
        assert adapter.observe(*t)
    assert adapter.mask.sum() == 2
    assert adapter.observe(*first[-1])  # terminal: pushed (buffered), then the window empties
    assert_empty(adapter)
    assert adapter.buffer.ordered().terminated.tolist() == [0.0, 0.0, 1.0]
    assert adapter.follow(*second[0]) and adapter.mask.sum() == 1
    assert adapter.follow(*second[1]) and len(adapter.buffer) == 3  # followed: not buffered
    assert_empty(adapter)
    # a refused terminal transition changes nothing
    assert adapter.observe(*second[0])
    obs, action, _, nxt, _ = second[1]
    assert not adapter.observe(obs, action, "1", nxt, True)
    assert adapter.mask.sum() == 1 and adapter.rejected["reward_not_number"] == 1


def test_adapt_rebuilds_the_window_from_the_current_episode_only(drh, rma) -> None:
    policy, bundle = drh
    adapter = load(bundle)
    rollout = episodes(policy, [6, 5])
    rollout[-1] = (*rollout[-1][:4], False)  # the second episode is still running, 5 steps in
    for t in rollout[:8]:  # episode 1 (6, terminal) and 2 steps of episode 2
        assert adapter.observe(*t)
    live = adapter.params
    adapter.begin_episode()  # whatever the live window was, adapt rebuilds it from the buffer
    report = adapter.adapt()
    assert report.accepted and report.n_train == 2 and report.n_transitions == 8
    assert "after the last terminal one" in report.reason
    for key, value in live.items():
        np.testing.assert_allclose(adapter.params[key], value, atol=1e-6)
    assert adapter.mask.tolist() == [0.0, 0.0, 1.0, 1.0]
    for t in rollout[8:]:
        assert adapter.observe(*t)
    live = adapter.params
    assert adapter.adapt().n_train == LENGTH  # the episode is longer than the window
    for key, value in live.items():
        np.testing.assert_allclose(adapter.params[key], value, atol=1e-6)
    # the last buffered transition terminal: the next episode's window, empty
    adapter.reset()
    for t in rollout[:6]:
        assert adapter.observe(*t)
    report = adapter.adapt()
    assert report.accepted and report.n_train == 0
    assert_empty(adapter)
    # not episodic: the last `length` transitions, across the episode boundary
    plain = load(rma.path)
    for t in episodes(rma.policy, [6, 2]):
        assert plain.observe(*t)
    assert plain.adapt().n_train == min(8, plain.length) == plain.mask.sum()


def test_saved_state_round_trips_and_every_reachable_state_is_accepted(drh, tmp_path) -> None:
    policy, bundle = drh
    adapter = load(bundle)
    rollout = episodes(policy, [5, 3])
    states = []
    for t in rollout:
        assert adapter.observe(*t)
        states.append({k: np.array(v) for k, v in adapter.params.items()})
        if not adapter.mask.any():  # after the terminal transitions
            adapter.save_state(tmp_path / "state.npz")
    assert_empty(adapter)
    other = load(bundle)
    other.load_state(tmp_path / "state.npz")
    assert_empty(other)
    assert (
        other.buffer.ordered().terminated.tolist() == adapter.buffer.ordered().terminated.tolist()
    )
    for state in states:  # the window of every step, the empty ones after a terminal included
        other.restore_params(state)
        for key in (CONTEXT, WINDOW, MASK):
            np.testing.assert_array_equal(other.params[key], state[key])
    adapter.observe(*rollout[0])
    adapter.save_state(tmp_path / "mid.npz")
    other.load_state(tmp_path / "mid.npz")
    assert other.mask.sum() == 1
    np.testing.assert_array_equal(other.context, adapter.context)


# ---------------------------------------------------------------------- the loop


class GymRobot:
    """A robometa env on one task, as the loop sees a robot."""

    def __init__(self, env: object, task: object) -> None:
        self.env, self.task = env, task

    def reset(self, *, seed: int | None = None) -> tuple:
        self.env.unwrapped.set_task(self.task)
        return self.env.reset(seed=seed)

    def step(self, action: int) -> tuple:
        return self.env.step(action)


def test_greedy_return_of_an_episodic_bundle_is_the_harness_actors(drh, edited_bundle) -> None:
    from robometa.evaluate import _returns
    from robometa.rollout import make_env

    policy, bundle = drh
    method = DRHistoryMethod("dr-history", policy, 0.3)
    adapter = load(bundle)
    across = load(with_episodic(edited_bundle, bundle, False))  # the window crosses episodes
    env = make_env("robometa/CartPole-v0")
    try:
        tasks = env.unwrapped.dynamics_space.sample(4, seed=1, split="test")
        differs = 0
        for i, task in enumerate(tasks):
            harness = _returns(env, method.initial_actor(), task, 3, 100 + i)
            robot = GymRobot(env, task)
            assert greedy_return(adapter, robot, episodes=3, seed=100 + i) == harness
            differs += greedy_return(across, robot, episodes=3, seed=100 + i) != harness
            assert len(adapter.buffer) == 0
    finally:
        env.close()
    assert differs  # without begin_episode the returns are not the harness's


def test_collect_begins_an_episode_at_every_restart(drh, rma) -> None:
    policy, bundle = drh
    adapter = load(bundle)
    robot = FakeCartPole(max_steps=5)  # truncated every 5 steps: no terminal flag
    rng = np.random.default_rng(0)
    assert collect(adapter, robot, 12, 0.3, rng, seed=0) == 12
    assert adapter.mask.sum() == 2  # the 2 steps since the last restart
    assert not adapter.buffer.ordered().terminated.any()
    # a non-episodic bundle's window runs across the restarts
    plain = load(rma.path)
    assert collect(plain, FakeCartPole(max_steps=5), 12, 0.3, rng, seed=0) == 12
    assert plain.mask.sum() == plain.length


def test_rma_bundles_are_unchanged_begin_episode_is_a_no_op(rma) -> None:
    adapter = load(rma.path)
    rollout = episodes(rma.policy, [3, 3])
    for t in rollout[:3]:
        assert adapter.observe(*t)
    before = {k: np.array(v) for k, v in adapter.params.items()}
    assert adapter.mask.sum() == 3  # a terminal transition does not empty it
    adapter.begin_episode()
    for key, value in before.items():
        np.testing.assert_array_equal(adapter.params[key], value)
    # greedy episodes: the window keeps following the robot from one episode to the next
    adapter.reset()
    greedy_return(adapter, FakeCartPole(max_steps=2), episodes=3, seed=0)
    assert adapter.mask.sum() == min(6, adapter.length)
