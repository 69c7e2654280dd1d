"""The ``robometa`` command line."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable


def cmd_envs(args: argparse.Namespace) -> int:
    """Roll out a random policy on every robot family and print the returns."""
    import gymnasium as gym
    import numpy as np

    import robometa.envs

    print(f"{'env':26} {'task split':10} {'episodes':>8} {'mean return':>12}")
    for env_id in robometa.envs.FAMILIES:
        env = gym.make(env_id)
        rng = np.random.default_rng(args.seed)
        returns = []
        for i, task in enumerate(env.unwrapped.sample_tasks(args.episodes, seed=args.seed)):
            env.unwrapped.set_task(task)
            env.reset(seed=args.seed + i)
            total, done = 0.0, False
            while not done:
                _, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
                total += r
                done = term or trunc
            returns.append(total)
        env.close()
        print(f"{env_id:26} {'train':10} {len(returns):8d} {np.mean(returns):12.2f}")
    return 0


def _int_in(low: int, high: int, check_low: bool = True) -> Callable[[str], int]:
    """argparse type of an integer flag in ``[low, high]`` (argparse names the flag in front
    of the message). ``check_low=False`` leaves the lower bound to the command, which words
    that error itself (``robometa play --episodes 0``)."""
    top = f"{high:_}" if high >= 100_000 else str(high)  # as the config reference shows it
    allowed = f"the allowed range is [{low}, {top}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer >= {low} ({allowed})"
            ) from None
        if check_low and value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {low} ({allowed})")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text!r} is too large ({allowed})")
        return value

    parse.__name__ = "integer"  # what argparse's own messages call the type
    return parse


def _step_counts(high: int) -> Callable[[str], list[int]]:
    """argparse type of ``--curve``: adaptation step counts in ``[0, high]``, comma-separated."""

    def parse(text: str) -> list[int]:
        try:
            steps = [int(k) for k in text.split(",")]
        except ValueError:
            steps = []
        if not steps or any(k < 0 for k in steps):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected adaptation step counts >= 0 separated by commas, e.g. "
                f"0,1,2,5 (each at most {high})"
            )
        if max(steps) > high:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {max(steps)} adaptation steps is outside the allowed range "
                f"[0, {high}] (adaptation.steps allows at most {high})"
            )
        return steps

    parse.__name__ = "step counts"
    return parse


def _support_sizes(high: int) -> Callable[[str], list[int]]:
    """argparse type of ``eval --support``: support sizes in ``[1, high]``, comma-separated."""
    top = f"{high:_}" if high >= 100_000 else str(high)  # as the config reference shows it

    def parse(text: str) -> list[int]:
        try:
            sizes = [int(k) for k in text.split(",")]
        except ValueError:
            sizes = []
        if not sizes or any(k < 1 for k in sizes):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected support sizes >= 1 separated by commas, e.g. 10,50,200 "
                f"(the allowed range is [1, {top}])"
            )
        if max(sizes) > high:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {max(sizes)} support transitions is outside the allowed range "
                f"[1, {top}] (adaptation.support_size allows at most {top})"
            )
        return sizes

    parse.__name__ = "support sizes"
    return parse


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or meta-train) a policy from a YAML config into a run directory."""
    import shlex
    from pathlib import Path

    from robometa.config import load_config
    from robometa.distributed import Backend
    from robometa.train import TrainingInterrupted, checkpoint_steps, train

    backend = Backend(args.backend, args.address, args.num_workers)
    if args.resume:
        given = [
            flag
            for flag, value in (
                ("CONFIG", args.config),
                ("--out", args.out),
                ("--steps", args.steps),
                ("--seed", args.seed),
                ("--set", args.set),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"--resume continues a run with its own config and directory; drop {', '.join(given)}"
            )
        out = Path(args.resume)
    else:
        if args.config is None:
            raise ValueError(
                "give a CONFIG.yaml (a path or a shipped config's name), or --resume RUN_DIR"
            )
        from robometa.configs import resolve

        config = resolve(args.config)
        cfg = load_config(config, args.set or (), steps=args.steps, seed=args.seed)
        out = Path(args.out) if args.out else Path("runs") / f"{config.stem}-seed{cfg.seed}"
    where = ""  # a run on Ray workers is resumed on them too (either backend can resume it)
    if backend.name != "local":
        where = f" --backend {backend.name}"
        if backend.address is not None:
            where += f" --address {shlex.quote(backend.address)}"
        if backend.num_workers is not None:
            where += f" --num-workers {backend.num_workers}"
    resume_with = f"resume with: robometa train --resume {shlex.quote(str(out))}{where}"
    try:
        if args.resume:
            train(None, out, resume=True, backend=backend)  # type: ignore[arg-type]
        else:
            train(cfg, out, backend=backend)
    except TrainingInterrupted as stop:
        print(f"interrupted at {stop.env_steps} env steps; {resume_with}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint is where a resume starts
        steps = checkpoint_steps(out)
        if steps is None:
            raise
        print(
            f"interrupted; the checkpoint at {steps} env steps stays; {resume_with}",
            file=sys.stderr,
        )
        return 130
    done = "resumed and finished" if args.resume else "run written to"
    steps = checkpoint_steps(out)
    print(f"{done} {out}: {steps} env steps (policy.pt, metrics.csv, learning_curve.png)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate trained runs on held-out robots: adaptation curves and normalized scores."""
    from pathlib import Path

    from robometa.evaluate import run_evaluation

    out = Path(args.out)
    run_evaluation(
        args.runs,
        tasks=args.tasks,
        n_tasks=args.n_tasks,
        episodes=args.episodes,
        steps=args.curve,
        out=out,
        fine_tune=not args.no_fine_tune,
        supports=args.support,
        by_motor_sign=args.by_motor_sign,
        jobs=args.jobs,
    )
    support = f", {out / 'support.png'}" if args.support else ""
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'adaptation.png'}{support}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """List the shipped configs (one line each), or print one to start your own from."""
    import yaml

    from robometa.configs import available, summary

    shipped = available()
    if args.name:
        name = args.name[: -len(".yaml")] if args.name.endswith(".yaml") else args.name
        if name not in shipped:  # only shipped configs: this is no file viewer
            close = difflib.get_close_matches(name, shipped, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FileNotFoundError(
                f"no shipped config of that name: {args.name!r}{hint}; shipped: "
                f"{', '.join(shipped)}"
            )
        print(shipped[name].read_text(encoding="utf-8"), end="")
        return 0
    width = max(map(len, shipped))
    print(f"{'name':{width}}  {'algorithm':9}  {'env':14}  {'env steps':>9}  description")
    for name, path in shipped.items():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        env = str(raw.get("env", {}).get("id", "")).split("/")[-1]
        steps = raw.get("dqn", {}).get("total_steps", "")
        text = summary(path)
        text = text if len(text) <= 90 else text[:89] + "…"
        print(f"{name:{width}}  {raw.get('algorithm', ''):9}  {env:14}  {steps:>9}  {text}")
    print("\ntrain one with `robometa train NAME`; `robometa configs NAME` prints it")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Meta-train, evaluate, export and adapt on held-out robots through the runtime."""
    from robometa.quickstart import run_quickstart

    run_quickstart(
        args.out,
        meta_steps=args.meta_steps,
        baseline_steps=args.baseline_steps,
        eval_tasks=args.eval_tasks,
        seed=args.seed,
    )
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    """Render a trained run or an exported bundle on one robot, before and after adapting."""
    from robometa.play import play

    result = play(
        args.source,
        out=args.out,
        tasks=args.tasks,
        task_index=args.task_index,
        test_task=args.sample_test_task,
        episodes=args.episodes,
        seed=args.seed,
        adapt=not args.no_adapt,
        fps=args.fps,
        every=args.every,
    )
    print("\n".join(result.lines()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a trained run (RUN_DIR/policy.pt) as an ONNX bundle for the robot."""
    from robometa.bundle import export_bundle

    try:
        out = export_bundle(
            args.run_dir, args.out, verify=not args.no_verify, overwrite=args.overwrite
        )
    except (FileExistsError, FileNotFoundError):
        raise  # the CLI prints these as one error line
    except OSError as err:  # permissions, a read-only or full disk: one line naming the path
        raise ValueError(f"cannot write bundle {args.out}: {err}") from err
    print(f"wrote bundle {out}")
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``robometa export RUN_DIR --out BUNDLE_DIR`` on the CLI's subparsers."""
    from pathlib import Path

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    p.add_argument("run_dir", type=Path, help="run directory holding policy.pt")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="bundle directory to write: a new or empty directory, or an existing bundle with "
        "--overwrite (a symlink to one is followed; the current directory is refused)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the robometa bundle already at --out (a directory that is not a bundle, "
        "or also holds files robometa did not write, is refused and never touched)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the ONNX-vs-torch parity check after writing (default: check)",
    )
    p.set_defaults(func=cmd_export)
    return p


def build_parser() -> argparse.ArgumentParser:
    from robometa import __version__
    from robometa.config import MAX_ADAPT_STEPS, MAX_ENV_STEPS, MAX_SEED

    seed = _int_in(0, MAX_SEED)  # numpy's and gymnasium's seeds are unsigned 32-bit
    env_steps = _int_in(1, MAX_ENV_STEPS)  # dqn.total_steps' range
    parser = argparse.ArgumentParser(prog="robometa", description=__doc__)
    parser.add_argument("--version", action="version", version=f"robometa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("envs", help=cmd_envs.__doc__)
    p.add_argument(
        "--episodes", type=_int_in(1, 1000), default=5, help="episodes per family (default 5)"
    )
    p.add_argument("--seed", type=seed, default=0, help="task and action seed (default 0)")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser(
        "quickstart", help=cmd_quickstart.__doc__, description=cmd_quickstart.__doc__
    )
    p.add_argument("--out", default="quickstart", help="output directory (default: quickstart)")
    p.add_argument(
        "--meta-steps",
        type=env_steps,
        default=30000,
        help="env steps of CAVIA meta-training (default 30000)",
    )
    p.add_argument(
        "--baseline-steps",
        type=env_steps,
        default=30000,
        help="env steps of the domain-randomized DQN baseline (default 30000)",
    )
    p.add_argument(
        "--eval-tasks",
        type=_int_in(1, 1000),
        default=5,
        help="held-out tasks per group in the evaluation (default 5)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of both runs (default 0)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("configs", help=cmd_configs.__doc__, description=cmd_configs.__doc__)
    p.add_argument("name", nargs="?", help="a shipped config to print (default: list them all)")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument(
        "config",
        nargs="?",
        help="experiment YAML: a path, or a shipped config's name (`robometa configs` lists them)",
    )
    p.add_argument("--out", help="run directory (default: runs/<config name>-seed<seed>)")
    p.add_argument("--steps", type=env_steps, help="override dqn.total_steps (environment steps)")
    p.add_argument("--seed", type=seed, help="override the seed")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set dqn.learning_rate=3e-4",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where a meta-learner's tasks run: in this process (default), or on Ray workers "
        '(pip install "robometa[ray]"): the same results (to the bit with one worker, to '
        "float rounding with several); a run resumes with either",
    )
    p.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="with --backend ray: the cluster to join (auto: the one this machine is in; "
        "HOST:PORT: the address `ray start --head` prints); default: start Ray here",
    )
    p.add_argument(
        "--num-workers",
        type=_int_in(1, 1024),
        metavar="N",
        help="with --backend ray: task workers (default: one per CPU of the cluster, at most "
        "one per task)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    p.add_argument("runs", nargs="+", help="run directories (several seeds of a method pool)")
    p.add_argument(
        "--tasks",
        default="test",
        metavar="test|heldout|fresh|DIR|FILE",
        help="test: held-out in-distribution (id) and out-of-distribution (ood) robots drawn "
        "with a fixed seed (default); heldout: the family's versioned held-out robots shipped "
        "in configs/tasks/<family>/heldout/ (groups id, id-fixed-sign, ood); fresh: the "
        "family's second set, never used for any choice of settings (report it separately); "
        "DIR: one group per task file in it, named by the file stem; FILE: a task file "
        "(YAML/JSON with a 'tasks' list)",
    )
    p.add_argument(
        "--n-tasks", type=_int_in(1, 1000), default=10, help="tasks per group with --tasks test"
    )
    p.add_argument(
        "--by-motor-sign",
        action="store_true",
        help="also report each group whose robots have both motor signs split by it: rows "
        "<group>/motor+ and <group>/motor- (motor mounted normally, reversed) in the table "
        "and the JSON; the group's own rows are unchanged",
    )
    p.add_argument(
        "--episodes", type=_int_in(1, 1000), default=2, help="greedy episodes per task and step"
    )
    p.add_argument(
        "--curve",
        type=_step_counts(MAX_ADAPT_STEPS),
        help="adaptation steps to evaluate, e.g. 0,1,5,20, past the runs' configured "
        "adaptation.steps too (default: 0,1,2,3 up to each run's configured steps); the DR + "
        "fine-tuning baseline takes each count at the rate tuned for it on training robots",
    )
    import dataclasses

    from robometa.config import AdaptationConfig

    support_hi = {f.name: f for f in dataclasses.fields(AdaptationConfig)}["support_size"]
    p.add_argument(
        "--support",
        type=_support_sizes(int(support_hi.metadata["hi"])),
        metavar="N[,N...]",
        help="support sizes to evaluate every method with, e.g. 10,50,200: transitions "
        "collected on each robot before adapting (the largest once; a smaller size adapts "
        "on the first N transitions); adds a support column and support.png (default: each "
        "run's adaptation.support_size). The DR + fine-tuning baseline fine-tunes on the "
        "same sizes; its rates are tuned once, at the configured size",
    )
    p.add_argument("--no-fine-tune", action="store_true", help="skip the DR + fine-tuning baseline")
    p.add_argument(
        "--jobs",
        type=_int_in(1, 256),
        default=1,
        help="runs evaluated at a time, each in a worker process (default 1); the returns are "
        "the same as with 1",
    )
    p.add_argument("--out", default="eval", help="report directory (default: eval)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "play",
        help=cmd_play.__doc__,
        description=cmd_play.__doc__
        + " A run directory (policy.pt) plays through torch, adapting as `robometa eval` does; "
        "a bundle directory (manifest.json) through the deploy runtime (collect, adapt). "
        "Greedy episode e of every panel starts from reset(seed=SEED+e); the support is "
        "collected with numpy.random.default_rng(SEED).",
    )
    p.add_argument("source", metavar="RUN_OR_BUNDLE", help="run directory or bundle directory")
    robot = p.add_mutually_exclusive_group()
    robot.add_argument(
        "--tasks", metavar="FILE", help="task file (YAML/JSON with a 'tasks' list) to pick from"
    )
    robot.add_argument(
        "--sample-test-task",
        type=seed,
        default=0,
        metavar="SEED",
        help="draw the robot from the test (out-of-distribution) ranges with this seed "
        "(default 0; used when --tasks is not given)",
    )
    p.add_argument(
        "--task-index", type=int, metavar="I", help="which robot of --tasks FILE (default 0)"
    )
    p.add_argument(
        "--episodes",
        type=_int_in(1, 100, check_low=False),  # play() words the error for N < 1
        default=1,
        metavar="N",
        help="greedy episodes per panel (default 1, at most 100)",
    )
    p.add_argument("--seed", type=seed, default=0, help="episode and support seed (default 0)")
    p.add_argument(
        "--no-adapt", action="store_true", help="show only the initial (meta-)parameters"
    )
    p.add_argument(
        "--out",
        default="play.gif",
        metavar="FILE",
        help="video to write, .gif or .mp4 (mp4 needs imageio-ffmpeg) "
        "(default: play.gif in the current directory)",
    )
    p.add_argument(
        "--fps",
        type=_int_in(1, 100, check_low=False),
        default=25,
        help="frames per second (default 25, at most 100)",
    )
    p.add_argument(
        "--every",
        type=_int_in(1, 1000, check_low=False),
        default=2,
        metavar="K",
        help="keep every K-th step as a frame (default 2: real time at 25 fps for the 50 Hz "
        "robot families)",
    )
    p.set_defaults(func=cmd_play)

    add_export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"robometa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robometa {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # e.g. an --out under a regular file, a full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"robometa {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
