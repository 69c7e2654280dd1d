"""The ``robometa-deploy`` command line: inspect a bundle, run the adaptation loop.

``robometa-deploy adapt`` runs :func:`robometa.deploy.loop.run_rounds` against a simulated new
robot configuration (a task file or a sampled test task of the bundle's robot family). The
simulator needs gymnasium and PyBullet on this host; they are imported inside the command,
never by the runtime. For a real robot, use the loop from Python (see
:mod:`robometa.deploy.loop`).

Example::

    robometa-deploy adapt --bundle bundles/cartpole --sample-test-task 3 \\
        --rounds 3 --support 200 --steps 5 --save-state cartpole-state.npz
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.bundle import Bundle, BundleError
from robometa.deploy.kinds import runtime_class
from robometa.deploy.loop import (
    KEEP,
    MAX_EVAL_EPISODES,
    MAX_ROUNDS,
    MAX_SEED,
    MAX_SUPPORT,
    SUPPORT_FROM,
    TABLE_HEADER,
    RoundResult,
    format_notes,
    format_row,
    run_rounds,
)
from robometa.deploy.runtime import (
    DEFAULT_CAPACITY,
    MAX_ADAPT_STEPS,
    MAX_CAPACITY,
    Adapter,
    WriteError,
    atomic_write,
    check_writable,
)


def cmd_info(args: argparse.Namespace) -> int:
    """Verify a bundle (files, manifest, arrays, graphs) and print what it holds."""
    bundle = Bundle.load(args.bundle)  # every check; a failure is one error line, exit 2
    m = bundle.manifest
    print(f"bundle      {bundle.path} (format {m['format_version']})")
    print(f"kind        {bundle.kind}")
    print(f"identity    sha256:{bundle.digest}")
    print("verified    files and hashes, manifest, arrays; graphs load, inputs/outputs match")
    if bundle.unlisted:
        print(f"not bundle  {', '.join(bundle.unlisted)} (not in the manifest: never read)")
    print(f"robot       {m['env_id']}  algorithm {m['algorithm']}  privileged {m['privileged']}")
    print(f"observation {m['observation']['shape']} {', '.join(m['observation']['names'])}")
    print(f"actions     {m['action']['n']}: {', '.join(m['action']['names'])}")
    for label, value in runtime_class(bundle.kind).describe(bundle):  # gradient: inner loop
        print(f"{label:<11} {value}")
    return 0


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as ``null``: strict JSON (a skipped round's losses
    are NaN, which ``json.dumps`` would write as the invalid token ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _make_robot(bundle: Bundle, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The simulated robot (a gymnasium env set to the chosen task), the task, an obs map."""
    try:
        import gymnasium as gym
        import robometa.envs
    except ImportError as err:
        raise ValueError(
            f"the simulated robots need gymnasium and PyBullet ({err}); install robometa on "
            "this host, or drive a real robot from Python with robometa.deploy.loop"
        ) from None

    env_id = args.env or bundle.env_id
    if env_id not in robometa.envs.FAMILIES:  # gym.make would import a module named before ':'
        flag = "--env" if args.env else f"env_id in {bundle.path / 'manifest.json'}"
        raise ValueError(
            f"{flag}: {env_id!r} is not a robometa robot family "
            f"(known: {', '.join(robometa.envs.FAMILIES)})"
        )
    overrides = bundle.manifest.get("dynamics", {}).get("overrides") or {}
    try:
        env = gym.make(env_id, **({"dynamics": overrides} if overrides else {}))
    except gym.error.Error as err:
        raise ValueError(
            f"cannot make robot family {env_id!r}: {err} (known: {', '.join(robometa.envs.FAMILIES)})"
        ) from None
    base = env.unwrapped
    if args.task is not None:
        tasks = robometa.envs.load_tasks(args.task, base.dynamics_space)
        if not 0 <= args.task_index < len(tasks):
            raise ValueError(
                f"--task-index {args.task_index} is outside [0, {len(tasks) - 1}] "
                f"({len(tasks)} tasks in {args.task})"
            )
        task = tasks[args.task_index]
    else:
        task = base.sample_tasks(1, seed=args.sample_test_task, split="test")[0]
    base.set_task(task)
    obs_fn = None
    if bundle.manifest.get("privileged"):
        # The oracle sees the true dynamics, normalized, appended to the observation.
        dyn = base.dynamics_space.normalized(task)

        def obs_fn(obs: np.ndarray) -> np.ndarray:
            return np.concatenate([np.asarray(obs, np.float32), dyn])

    dim = env.observation_space.shape[0] + (len(base.dynamics_space) if obs_fn else 0)
    if dim != bundle.obs_dim or env.action_space.n != bundle.n_actions:
        env.close()
        raise ValueError(
            f"{env_id} has obs_dim {dim} and {env.action_space.n} actions, the bundle "
            f"{bundle.path} expects {bundle.obs_dim} and {bundle.n_actions}"
        )
    return env, task, obs_fn


def _int_flag(low: int, high: int, maximum: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (argparse puts the flag's name in
    front of the message)."""
    bound = f" ({maximum})" if maximum else ""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer in [{low}, {high}]{bound}, got {text!r}"
            )
        return value

    return integer


def _float_flag(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a number in ``[low, high]`` (NaN never is)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number in [{low}, {high}], got {text!r}")
        return value

    return number


def cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt a bundle's policy to a simulated new robot configuration, round by round."""
    if args.keep == "best" and args.eval_episodes < 1:
        raise ValueError("--keep best compares measured returns: --eval-episodes must be >= 1")
    try:  # find an unwritable output now, not after the whole adaptation
        for out in (args.save_state, args.json):
            if out is not None:
                check_writable(out)
    except WriteError as err:
        print(f"robometa-deploy: error: {err}", file=sys.stderr)
        return 2
    bundle = Bundle.load(args.bundle)
    adapter = Adapter(bundle, **_runtime_options(bundle, args))
    support = adapter.support_size if args.support is None else args.support
    env, task, obs_fn = _make_robot(bundle, args)
    rows = "".join(f"; {label} {value}" for label, value in adapter.describe(bundle))
    print(
        f"bundle {bundle.path}: {bundle.manifest['algorithm']} on {bundle.env_id}, "
        f"a {bundle.kind} bundle{rows}"
    )
    print("task   " + ", ".join(f"{k}={v:g}" for k, v in task.items()))
    print(TABLE_HEADER)

    def show(result: RoundResult) -> None:
        print(format_row(result), flush=True)

    try:
        results = run_rounds(
            adapter,
            env,
            rounds=args.rounds,
            support=support,
            steps=args.steps,
            epsilon=args.epsilon,
            eval_episodes=args.eval_episodes,
            seed=args.seed,
            obs_fn=obs_fn,
            on_round=show,
            support_from=args.support_from,
            keep=args.keep,
        )
    finally:
        env.close()
    for line in format_notes(results):
        print(line)
    return _write_outputs(args, adapter, bundle, task, results)


#: the guard's flags -> the runtime's keyword arguments (``Adapter.guard_options``)
_GUARD_FLAGS = {
    "holdout_fraction": "--holdout-fraction",
    "tolerance": "--tolerance",
    "max_update_norm": "--max-update-norm",
}


def _runtime_options(bundle: Bundle, args: argparse.Namespace) -> dict[str, Any]:
    """The runtime's keyword arguments: the buffer's ``capacity`` (``--capacity``, else
    ``--support``, else the runtime's default: the bundle's support size), and each guard
    flag given, which only a runtime listing it in ``guard_options`` takes (``ValueError``
    naming the flag and the kind for any other)."""
    options: dict[str, Any] = {}
    capacity = args.capacity if args.capacity is not None else args.support
    if capacity is not None:
        options["capacity"] = capacity
    runtime = runtime_class(bundle.kind)
    for name, flag in _GUARD_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in runtime.guard_options:
            raise ValueError(
                f"{flag}: a {bundle.kind!r} bundle's runtime ({runtime.__name__}) has no "
                f"adaptation guard option {name!r}; leave {flag} out for this bundle"
            )
        options[name] = (value or None) if name == "max_update_norm" else value
    return options


def _write_outputs(
    args: argparse.Namespace,
    adapter: Adapter,
    bundle: Bundle,
    task: Any,
    results: list[RoundResult],
) -> int:
    """Write ``--save-state`` and ``--json``, each on its own: a failure of one (a one-line
    error naming the path, exit status 2) does not stop the other, and the JSON says whether
    the state was saved."""
    failures = []
    state = None
    if args.save_state is not None:
        try:
            adapter.save_state(args.save_state)
        except WriteError as err:
            failures.append(str(err))
            state = {"path": str(args.save_state), "saved": False, "error": str(err)}
        else:
            print(f"saved adapter state to {args.save_state}")
            state = {"path": str(args.save_state), "saved": True, "error": None}
    if args.json is not None:
        doc = {
            "bundle": str(bundle.path),
            "task": dict(task),
            "keep": args.keep,
            "rounds": [r.to_dict() for r in results],
        }
        if state is not None:
            doc["state"] = state
        text = json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n"
        try:
            atomic_write(args.json, lambda f: f.write(text.encode()))
        except WriteError as err:
            failures.append(str(err))
        else:
            print(f"wrote {args.json}")
    for message in failures:
        print(f"robometa-deploy: error: {message}", file=sys.stderr)
    return 2 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robometa-deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help=cmd_info.__doc__, description=cmd_info.__doc__)
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("adapt", help=cmd_adapt.__doc__, description=cmd_adapt.__doc__)
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--env", default=None, help="robot family id (default: the bundle's)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=Path, help="task file (YAML/JSON, `tasks: [...]`)")
    which.add_argument(
        "--sample-test-task",
        type=_int_flag(0, MAX_SEED, "MAX_SEED"),
        metavar="SEED",
        help="draw one robot configuration from the test (out-of-distribution) ranges",
    )
    p.add_argument("--task-index", type=int, default=0, help="which task of --task (default 0)")
    p.add_argument(
        "--rounds",
        type=_int_flag(0, MAX_ROUNDS, "MAX_ROUNDS"),
        default=3,
        help=f"collect/adapt rounds, 0-{MAX_ROUNDS} (default 3)",
    )
    p.add_argument(
        "--support",
        type=_int_flag(1, MAX_SUPPORT, "MAX_SUPPORT"),
        default=None,
        help=f"transitions collected per round, 1-{MAX_SUPPORT} (default: the bundle's support "
        f"size, or {DEFAULT_CAPACITY} where that is 0)",
    )
    p.add_argument(
        "--steps",
        type=_int_flag(0, MAX_ADAPT_STEPS, "MAX_ADAPT_STEPS"),
        default=None,
        help=f"gradient steps per round, 0-{MAX_ADAPT_STEPS} (default: the bundle's)",
    )
    p.add_argument(
        "--capacity",
        type=_int_flag(1, MAX_CAPACITY, "MAX_CAPACITY"),
        default=None,
        help=f"transition buffer size, 1-{MAX_CAPACITY}; adaptation uses the newest this many "
        "(default: --support)",
    )
    p.add_argument(
        "--epsilon",
        type=_float_flag(0.0, 1.0),
        default=None,
        help="random-action probability while collecting (default: the bundle's "
        "config adaptation.support_epsilon, as in meta-training and robometa eval, else 0.3; "
        "0 = greedy)",
    )
    p.add_argument(
        "--support-from",
        choices=SUPPORT_FROM,
        default="auto",
        help="parameters that act while collecting: meta (as in meta-training), current (the "
        "latest adapted ones), auto (meta for bundles that adapt from the meta-parameters)",
    )
    p.add_argument(
        "--keep",
        choices=KEEP,
        default="latest",
        help="parameters kept after each round: latest (the latest adaptation the inner-loss "
        "guard accepted) or best (those of the round with the best measured greedy return; a "
        "round that returns less is rolled back, and the table says so)",
    )
    p.add_argument(
        "--eval-episodes",
        type=_int_flag(0, MAX_EVAL_EPISODES, "MAX_EVAL_EPISODES"),
        default=3,
        help="greedy episodes per evaluation (default 3; >= 1 with --keep best)",
    )
    p.add_argument(
        "--seed",
        type=_int_flag(0, MAX_SEED, "MAX_SEED"),
        default=0,
        help="episode and exploration seed (default 0)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=_float_flag(0.0, 0.5),
        default=None,
        help="share of the buffer the guard holds out (default 0.2; 0: guard on the training "
        "data); a guard option of gradient bundles",
    )
    p.add_argument(
        "--tolerance",
        type=_float_flag(0.0, math.inf),
        default=None,
        help="relative rise of the held-out loss tolerated before rolling back (default 0.1); a "
        "guard option of gradient bundles",
    )
    p.add_argument(
        "--max-update-norm",
        type=_float_flag(0.0, math.inf),
        default=None,
        help="bound on each step's parameter change, global L2 (default 1.0; 0: no bound); a "
        "guard option of gradient bundles",
    )
    p.add_argument(
        "--save-state",
        type=Path,
        default=None,
        help="write the adapted state here (atomically; checked writable before adapting)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the rounds as JSON here (written even if --save-state fails)",
    )
    p.set_defaults(func=cmd_adapt)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BundleError, ValueError, FileNotFoundError) as err:
        print(f"robometa-deploy: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
