"""The adaptation loop against any robot with gymnasium's ``reset``/``step``.

Each round collects ``support`` transitions (epsilon-greedy, so the data covers actions the
greedy policy would not try; acting with the meta-parameters for bundles that adapt from them,
as in meta-training, else with the current parameters: ``support_from``), runs
``adapter.adapt(steps)`` on the buffer (the most recent ``capacity`` transitions, default the
bundle's support size), and measures the greedy return on fixed evaluation episodes (the same
seeds every round, so the rounds are comparable). Round 0 is the meta-parameters before any
adaptation.

The adapter's guard judges an adaptation by the inner (model) loss, not by what the robot
achieves: an adaptation can lower the loss and still lower the return. ``keep="best"`` makes
the measured return the judge: after each round's evaluation, if the return fell below the
best round's so far, that round's parameters are restored (``RoundResult.rolled_back_to``), so
the adapter always ends with the parameters of the best measured round.

A robot is any object with::

    reset(*, seed=None) -> (obs, info)
    step(action: int) -> (obs, reward, terminated, truncated, info)

so a gymnasium env works as is, and so does a thin class around a real robot's driver:

```python
from robometa.deploy import Adapter
from robometa.deploy.loop import format_table, run_rounds


class CartPoleRig:
    \"\"\"The lab cart-pole behind gymnasium's reset/step.\"\"\"

    def __init__(self, driver):
        self.driver = driver  # your hardware interface

    def reset(self, *, seed=None):
        self.driver.home()  # drive to the start pose; seed is for simulators
        return self.driver.read_state(), {}  # float32, ordered as manifest observation.names

    def step(self, action):
        self.driver.push(action)  # 0 left, 1 none, 2 right: manifest action.names
        obs = self.driver.read_state()
        fell = abs(obs[2]) > 0.21
        return obs, 1.0, fell, False, {}


adapter = Adapter.load("bundles/cartpole")
results = run_rounds(adapter, CartPoleRig(driver), rounds=3, support=200, steps=5)
print(format_table(results))
adapter.save_state("cartpole-state.npz")  # load_state() after a restart
```

Counts are ints (never a bool, float or str) within documented maxima: :data:`MAX_ROUNDS`,
:data:`MAX_SUPPORT`, :data:`MAX_EVAL_EPISODES`, :data:`MAX_EPISODE_STEPS`, :data:`MAX_SEED`;
anything else is a ``TypeError``/``ValueError`` naming the argument and the constant.

Only numpy and the runtime: the loop never imports gymnasium. Collecting is
:mod:`robometa.deploy.collection`'s one epsilon-greedy loop (numpy only), the one training and
evaluation run, so a seeded collection draws the same random numbers everywhere.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
from robometa.deploy import collection
from robometa.deploy.runtime import (
    MAX_ADAPT_STEPS,
    MAX_CAPACITY,
    Adapter,
    AdaptReport,
    check_count,
    check_number,
)

ObsFn = Callable[[np.ndarray], np.ndarray]
SUPPORT_FROM = ("auto", "meta", "current")
#: which parameters ``run_rounds`` keeps: the latest accepted adaptation's, or the best
#: measured round's (the return-aware mode).
KEEP = ("latest", "best")
#: the most rounds of one ``run_rounds``.
MAX_ROUNDS = 10_000
#: the most transitions collected per round (``support``, ``collect``'s ``n``): the runtime's
#: ``MAX_CAPACITY``, as a round's support is meant to fit the buffer.
MAX_SUPPORT = MAX_CAPACITY
#: the most greedy episodes per evaluation (``eval_episodes``, ``greedy_return``'s
#: ``episodes``).
MAX_EVAL_EPISODES = 10_000
#: the longest episode (``max_episode_steps``).
MAX_EPISODE_STEPS = 1_000_000
#: the largest seed (seeds are ints in ``[0, MAX_SEED]``, numpy's 32-bit seed range).
MAX_SEED = 2**32 - 1


class Robot(Protocol):
    """Gymnasium's ``reset``/``step`` (a simulated or a real robot)."""

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]: ...


@dataclass(frozen=True)
class RoundResult:
    """One round: transitions collected (and how many ``observe`` accepted), the adaptation
    report (``None`` for round 0) and the mean greedy return of the round's parameters.

    ``acting_round`` is the round whose parameters act after this round (this one after an
    accepted adaptation, else an earlier one); ``rolled_back_to`` is set when ``keep="best"``
    restored that earlier round's parameters because this round's return was lower.
    """

    round: int
    collected: int
    accepted_transitions: int
    report: AdaptReport | None
    greedy_return: float
    acting_round: int | None = None
    rolled_back_to: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "collected": self.collected,
            "accepted_transitions": self.accepted_transitions,
            "report": None if self.report is None else self.report.to_dict(),
            "greedy_return": self.greedy_return,
            "acting_round": self.acting_round,
            "rolled_back_to": self.rolled_back_to,
        }


def _identity(obs: np.ndarray) -> np.ndarray:
    return obs


def greedy_return(
    adapter: Adapter,
    robot: Robot,
    episodes: int,
    seed: int = 0,
    obs_fn: ObsFn | None = None,
    max_episode_steps: int = 1000,
) -> float:
    """Mean return of the greedy policy over ``episodes`` episodes seeded ``seed, seed+1...``
    (``nan`` for 0 episodes).

    ``episodes`` in ``[0, MAX_EVAL_EPISODES]``, ``max_episode_steps`` in ``[1,
    MAX_EPISODE_STEPS]``; a reward that is not a finite number raises ``ValueError`` naming the
    episode and step (a NaN return would compare as neither better nor worse).

    A runtime whose state follows the robot (one with ``follow``: ``recurrent``, ``history``)
    advances it through these episodes without buffering, and one with ``begin_episode`` is
    told after every ``robot.reset`` that an episode starts (an episodic ``history`` bundle,
    ``dr-history``'s, empties its window there, as in training and ``robometa eval``; for
    the others it is a no-op).
    """
    check_count("episodes", episodes, 0, MAX_EVAL_EPISODES, "MAX_EVAL_EPISODES")
    _check_episode_args(seed, max_episode_steps)
    see = obs_fn or _identity
    # A runtime whose state follows the robot (recurrent, history) keeps following it in these
    # episodes, as in training and robometa eval; nothing is buffered. One whose memory is per
    # episode (an episodic history bundle) starts each episode afresh.
    follow = getattr(adapter, "follow", None)
    begin_episode = getattr(adapter, "begin_episode", None)
    totals = []
    for i in range(episodes):
        obs, _ = robot.reset(seed=seed + i)
        if begin_episode is not None:
            begin_episode()
        total = 0.0
        for t in range(max_episode_steps):
            seen = see(obs)
            action = adapter.act(seen)
            obs, reward, terminated, truncated, _ = robot.step(action)
            total += _finite_reward(reward, i, t)
            if follow is not None:
                follow(seen, action, reward, see(obs), terminated)
            if terminated or truncated:
                break
        totals.append(total)
    return float(np.mean(totals)) if totals else float("nan")


def _finite_reward(reward: Any, episode: int, step: int) -> float:
    value = reward.item() if isinstance(reward, np.ndarray) and reward.ndim == 0 else reward
    try:
        x = check_number("reward", value, -math.inf, math.inf)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise ValueError(
            f"robot.step returned reward {reward!r} in evaluation episode {episode}, step "
            f"{step}; expected a finite number"
        )
    return x


def _check_episode_args(seed: Any, max_episode_steps: Any) -> None:
    check_count("seed", seed, 0, MAX_SEED, "MAX_SEED")
    check_count("max_episode_steps", max_episode_steps, 1, MAX_EPISODE_STEPS, "MAX_EPISODE_STEPS")


def collect(
    adapter: Adapter,
    robot: Robot,
    n: int,
    epsilon: float,
    rng: np.random.Generator,
    seed: int = 0,
    obs_fn: ObsFn | None = None,
    max_episode_steps: int = 1000,
) -> int:
    """Run ``n`` epsilon-greedy steps, ``observe`` each; return how many were accepted.

    Episodes restart on ``terminated``, ``truncated`` or after ``max_episode_steps`` steps;
    only ``terminated`` is stored as terminal (a time limit is not the end of the task).
    After every ``robot.reset`` (the first one included) an adapter with ``begin_episode``
    is told that an episode starts, as in :func:`greedy_return`.
    ``n`` in ``[0, MAX_SUPPORT]``, ``epsilon`` in ``[0, 1]``.
    """
    check_count("n", n, 0, MAX_SUPPORT, "MAX_SUPPORT")
    check_number("epsilon", epsilon, 0.0, 1.0)
    _check_episode_args(seed, max_episode_steps)
    see = obs_fn or _identity
    observer = _Observer(adapter, robot)
    seeds = itertools.count(seed)  # episode i starts from reset(seed=seed + i)
    begin_episode = getattr(adapter, "begin_episode", None)

    def restart() -> np.ndarray:
        obs = see(robot.reset(seed=next(seeds))[0])
        if begin_episode is not None:
            begin_episode()
        return obs

    collection.collect(
        observer,
        collection.Episode(restart()),
        adapter.act,
        n,
        epsilon,
        rng,
        adapter.n_actions,
        observer.store,
        restart,
        max_episode_steps,
        see,
    )
    return observer.accepted


class _Observer:
    """The robot as :func:`robometa.deploy.collection.collect` steps it, and ``adapter.observe`` as
    its store, counting the accepted transitions.

    The collection loop adds each reward to the episode's return, but a robot's reward goes to
    ``observe`` untouched, which refuses a non-number (``None``, ``"1"``, ``10**400``) with a
    reason instead of raising: so the loop is handed 0.0 and ``observe`` the robot's value.
    """

    def __init__(self, adapter: Adapter, robot: Robot) -> None:
        self.adapter = adapter
        self.robot = robot
        self.accepted = 0
        self._reward: Any = None

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, self._reward, terminated, truncated, info = self.robot.step(action)
        return obs, 0.0, terminated, truncated, info

    def store(
        self,
        obs: np.ndarray,
        action: int,
        _reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        _info: dict[str, Any],
    ) -> None:
        self.accepted += self.adapter.observe(obs, action, self._reward, next_obs, terminated)


def run_rounds(
    adapter: Adapter,
    robot: Robot,
    *,
    rounds: int,
    support: int,
    steps: int | None = None,
    epsilon: float | None = None,
    eval_episodes: int = 3,
    seed: int = 0,
    obs_fn: ObsFn | None = None,
    max_episode_steps: int = 1000,
    on_round: Callable[[RoundResult], None] | None = None,
    support_from: str = "auto",
    keep: str = "latest",
) -> list[RoundResult]:
    """Round 0 (meta-parameters), then ``rounds`` rounds of collect -> adapt -> evaluate.

    ``support_from`` picks the parameters that act while collecting: ``"meta"`` (the
    meta-parameters, as in meta-training, so every round re-identifies the robot from the data
    the inner loop was trained on), ``"current"`` (the latest adapted ones) or ``"auto"``:
    ``"meta"`` for bundles that adapt from the meta-parameters (``adapter.from_meta``),
    ``"current"`` otherwise. ``epsilon`` (the random-action probability while collecting)
    defaults to the bundle's training-time support epsilon (``adapter.support_epsilon``).

    ``keep`` picks the parameters the adapter holds after each round: ``"latest"`` (those of
    the latest adaptation the inner-loss guard accepted) or ``"best"``: those of the round with
    the highest measured greedy return so far (round 0 included; a tie goes to the newer
    round). A round whose return falls below the best is undone by restoring the best round's
    parameters (``rolled_back_to``) before the next round collects; ``"best"`` needs
    ``eval_episodes >= 1``. On a real robot the return is noisy: use enough episodes.

    For a runtime whose state follows the robot (one with ``follow``: ``recurrent``,
    ``history``) the greedy episodes advance that state as they run (the policy acts online,
    as it was trained to), and the state is put back afterwards: measuring has no side
    effect, so each round's return is that of the state its adaptation left, which is the
    state kept, rolled back to and acting in the next round's collection. A runtime with
    ``begin_episode`` is told at every episode start, in collection and evaluation alike
    (an episodic ``history`` bundle's window is per episode: its state at an episode's start
    is always the empty window's, whatever adaptation left).

    Counts: ``rounds`` in ``[0, MAX_ROUNDS]``, ``support`` in ``[0, MAX_SUPPORT]``,
    ``eval_episodes`` in ``[0, MAX_EVAL_EPISODES]``, ``seed`` in ``[0, MAX_SEED]``,
    ``max_episode_steps`` in ``[1, MAX_EPISODE_STEPS]``, ``steps`` as ``Adapter.adapt``.
    """
    if support_from not in SUPPORT_FROM:
        raise ValueError(f"support_from must be one of {SUPPORT_FROM}, got {support_from!r}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if support_from == "auto":
        support_from = "meta" if adapter.from_meta else "current"
    check_count("rounds", rounds, 0, MAX_ROUNDS, "MAX_ROUNDS")
    check_count("support", support, 0, MAX_SUPPORT, "MAX_SUPPORT")
    check_count("eval_episodes", eval_episodes, 0, MAX_EVAL_EPISODES, "MAX_EVAL_EPISODES")
    if steps is not None:  # checked by adapt too, but only after a round's collection
        check_count("steps", steps, 0, MAX_ADAPT_STEPS, "MAX_ADAPT_STEPS")
    if keep == "best" and eval_episodes < 1:
        raise ValueError('keep="best" compares measured returns, so eval_episodes must be >= 1')
    _check_episode_args(seed, max_episode_steps)
    if epsilon is None:
        epsilon = adapter.support_epsilon
    check_number("epsilon", epsilon, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    eval_seed = seed + 1_000_000  # same evaluation episodes in every round
    kwargs = {"obs_fn": obs_fn, "max_episode_steps": max_episode_steps}

    # A runtime whose state follows the robot (``follow``: recurrent, history) changes its
    # state during the greedy episodes; the measurement must not, so that the state measured
    # is the state kept (and restored by keep="best"), and every round is measured from the
    # state its adaptation left.
    follows = getattr(adapter, "follow", None) is not None

    def measure() -> tuple[float, dict[str, np.ndarray]]:
        """The greedy return of the current state, and that state (unchanged after)."""
        measured = adapter.params
        if follows:  # copies: the state may change in place while it follows the robot
            measured = {k: np.array(v, copy=True) for k, v in measured.items()}
        try:
            ret = greedy_return(adapter, robot, eval_episodes, eval_seed, **kwargs)
        finally:
            if follows:
                adapter.restore_params(measured)
        return ret, measured

    best = _Best(0, *measure())
    results = [RoundResult(0, 0, 0, None, best.greedy_return, acting_round=0)]
    if on_round:
        on_round(results[-1])
    acting = 0
    for r in range(1, rounds + 1):
        with adapter.acting_with_meta() if support_from == "meta" else contextlib.nullcontext():
            accepted = collect(adapter, robot, support, epsilon, rng, seed + 1000 * r, **kwargs)
        report = adapter.adapt(steps)
        if report.accepted:
            acting = r
        ret, measured = measure()
        rolled_back_to = None
        if keep == "best":
            if ret >= best.greedy_return:
                best = _Best(acting, ret, measured)
            elif acting != best.round or follows:  # a followed state moved in collection
                adapter.restore_params(best.params)
                acting = rolled_back_to = best.round
        results.append(
            RoundResult(r, support, accepted, report, ret, acting, rolled_back_to=rolled_back_to)
        )
        if on_round:
            on_round(results[-1])
    return results


class _Best(NamedTuple):
    """The best measured round of ``run_rounds(keep="best")`` and its parameters."""

    round: int
    greedy_return: float
    params: dict[str, np.ndarray]


TABLE_HEADER = (
    f"{'round':>5} {'collected':>9} {'rejected':>8} {'loss before':>11} {'loss after':>11} "
    f"{'adaptation':<12} {'greedy return':>13}"
)


def format_row(result: RoundResult) -> str:
    """One line of the per-round table (losses are the held-out inner loss)."""
    rep = result.report
    if rep is None:
        return (
            f"{result.round:5d} {'-':>9} {'-':>8} {'-':>11} {'-':>11} {'meta-params':<12} "
            f"{result.greedy_return:13.2f}"
        )
    status = "accepted" if rep.accepted else ("rolled back" if rep.rolled_back else "skipped")
    if result.rolled_back_to is not None:
        status = f"back to r{result.rolled_back_to}"
    rejected = result.collected - result.accepted_transitions
    return (
        f"{result.round:5d} {result.collected:9d} {rejected:8d} {rep.loss_before:11.4g} "
        f"{rep.loss_after:11.4g} {status:<12} {result.greedy_return:13.2f}"
    )


def format_notes(results: list[RoundResult]) -> list[str]:
    """One line per round whose adaptation was not kept: the guard's reason, or the return
    that made ``keep="best"`` roll back."""
    lines = []
    for r in results:
        if r.report is not None and not r.report.accepted:
            lines.append(f"round {r.round}: {r.report.reason}")
        if r.rolled_back_to is not None:
            lines.append(
                f"round {r.round}: greedy return {r.greedy_return:.2f} fell below round "
                f"{r.rolled_back_to}'s; rolled back to round {r.rolled_back_to}'s parameters"
            )
    return lines


def format_table(results: list[RoundResult]) -> str:
    """The per-round table, with the reason of every round not kept underneath."""
    return "\n".join([TABLE_HEADER, *(format_row(r) for r in results), *format_notes(results)])
