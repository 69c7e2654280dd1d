"""The adaptation loop against any robot with gymnasium's ``reset``/``step``.

Each round collects ``support`` transitions (epsilon-greedy, so the data covers actions the
greedy policy would not try; acting with the meta-parameters for bundles that adapt from them,
as in meta-training, else with the current parameters: ``support_from``), runs
``adapter.adapt(steps)`` on the buffer (the most recent ``capacity`` transitions, default the
bundle's support size), and measures the greedy return on fixed evaluation episodes (the same
seeds every round, so the rounds are comparable). Round 0 is the meta-parameters before any
adaptation.

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

Only numpy and the runtime: the loop never imports gymnasium.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from robometa.deploy.runtime import Adapter, AdaptReport

ObsFn = Callable[[np.ndarray], np.ndarray]
SUPPORT_FROM = ("auto", "meta", "current")


class Robot(Protocol):
    """Gymnasium's ``reset``/``step`` (a simulated or a real robot)."""

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]: ...


@dataclass(frozen=True)
class RoundResult:
    """One round: transitions collected (and how many ``observe`` accepted), the adaptation
    report (``None`` for round 0) and the mean greedy return afterwards."""

    round: int
    collected: int
    accepted_transitions: int
    report: AdaptReport | None
    greedy_return: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "collected": self.collected,
            "accepted_transitions": self.accepted_transitions,
            "report": None if self.report is None else self.report.to_dict(),
            "greedy_return": self.greedy_return,
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
    """Mean return of the greedy policy over ``episodes`` episodes seeded ``seed, seed+1...``."""
    see = obs_fn or _identity
    totals = []
    for i in range(episodes):
        obs, _ = robot.reset(seed=seed + i)
        total = 0.0
        for _ in range(max_episode_steps):
            obs, reward, terminated, truncated, _ = robot.step(adapter.act(see(obs)))
            total += float(reward)
            if terminated or truncated:
                break
        totals.append(total)
    return float(np.mean(totals)) if totals else float("nan")


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
    """
    see = obs_fn or _identity
    accepted = 0
    episode = 0
    obs = see(robot.reset(seed=seed)[0])
    length = 0
    for _ in range(n):
        if rng.random() < epsilon:
            action = int(rng.integers(adapter.n_actions))
        else:
            action = adapter.act(obs)
        next_raw, reward, terminated, truncated, _ = robot.step(action)
        next_obs = see(next_raw)
        accepted += adapter.observe(obs, action, reward, next_obs, bool(terminated))
        length += 1
        if terminated or truncated or length >= max_episode_steps:
            episode += 1
            obs, length = see(robot.reset(seed=seed + episode)[0]), 0
        else:
            obs = next_obs
    return accepted


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
) -> list[RoundResult]:
    """Round 0 (meta-parameters), then ``rounds`` rounds of collect -> adapt -> evaluate.

    ``support_from`` picks the parameters that act while collecting: ``"meta"`` (the
    meta-parameters, as in meta-training, so every round re-identifies the robot from the data
    the inner loop was trained on), ``"current"`` (the latest adapted ones) or ``"auto"``:
    ``"meta"`` for bundles that adapt from the meta-parameters (``adapter.from_meta``),
    ``"current"`` otherwise. ``epsilon`` (the random-action probability while collecting)
    defaults to the bundle's training-time support epsilon (``adapter.support_epsilon``).
    """
    if support_from not in SUPPORT_FROM:
        raise ValueError(f"support_from must be one of {SUPPORT_FROM}, got {support_from!r}")
    if support_from == "auto":
        support_from = "meta" if adapter.from_meta else "current"
    if rounds < 0 or support < 0 or eval_episodes < 0:
        raise ValueError(
            f"rounds, support and eval_episodes must be >= 0, got {rounds}, {support}, "
            f"{eval_episodes}"
        )
    if epsilon is None:
        epsilon = adapter.support_epsilon
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    rng = np.random.default_rng(seed)
    eval_seed = seed + 1_000_000  # same evaluation episodes in every round
    kwargs = {"obs_fn": obs_fn, "max_episode_steps": max_episode_steps}
    results = [
        RoundResult(
            0, 0, 0, None, greedy_return(adapter, robot, eval_episodes, eval_seed, **kwargs)
        )
    ]
    if on_round:
        on_round(results[-1])
    for r in range(1, rounds + 1):
        with adapter.acting_with_meta() if support_from == "meta" else contextlib.nullcontext():
            accepted = collect(adapter, robot, support, epsilon, rng, seed + 1000 * r, **kwargs)
        report = adapter.adapt(steps)
        ret = greedy_return(adapter, robot, eval_episodes, eval_seed, **kwargs)
        results.append(RoundResult(r, support, accepted, report, ret))
        if on_round:
            on_round(results[-1])
    return results


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
    rejected = result.collected - result.accepted_transitions
    return (
        f"{result.round:5d} {result.collected:9d} {rejected:8d} {rep.loss_before:11.4g} "
        f"{rep.loss_after:11.4g} {status:<12} {result.greedy_return:13.2f}"
    )


def format_table(results: list[RoundResult]) -> str:
    """The per-round table, with the reason of every round not accepted underneath."""
    lines = [TABLE_HEADER, *(format_row(r) for r in results)]
    for r in results:
        if r.report is not None and not r.report.accepted:
            lines.append(f"round {r.round}: {r.report.reason}")
    return "\n".join(lines)
