"""On-device adaptation latency of every bundle kind, side by side in one run.

What a robot's control computer pays for each way of adapting, through the torch-free runtime
(:class:`robometa.deploy.Adapter`, onnxruntime, one thread) on the same simulated
transitions:

* ``act``: one observation -> greedy action (p50 and p99, microseconds);
* ``observe``: one transition into the adapter (p50, microseconds); for a kind that adapts
  online (a history window or a recurrent state updated every step) this is its per-step
  update, otherwise only the buffer write;
* ``adapt``: one ``Adapter.adapt()`` call with its bundle's defaults on N buffered transitions
  (median milliseconds, N = ``--sizes``): ``gradient`` bundles take their guarded gradient
  steps, ``context`` bundles one encoder pass, an online kind whatever its ``adapt`` does.

The transitions come from the bundle's own robot family in simulation (random actions on one
test-split robot), so every bundle sees the same kind of data. Bundles are exported from
trained runs (``--runs``, each ``policy.pt`` to a temporary bundle) or given (``--bundles``)::

    python benchmarks/adapt_latency.py --out bench-results/adapt_latency.json \\
        --runs bench-results/runs/cartpole/cavia-seed0 bench-results/runs/cartpole/context-seed0

The JSON holds one entry per bundle (its kind, algorithm and each timing); a markdown table is
printed. Latency is the runtime's alone: the policy was trained elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZES = (10, 50, 200)


def time_calls(fn, repeats: int, warmup: int) -> np.ndarray:
    """Per-call wall time in ns."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        t = clock()
        fn()
        out[i] = clock() - t
    return out


def simulated_transitions(env_id: str, n: int, seed: int = 0) -> list[tuple]:
    """``n`` transitions of random actions on one test-split robot of ``env_id``."""
    from robometa.rollout import make_env

    env = make_env(env_id)
    task = env.unwrapped.sample_tasks(1, seed=seed, split="test")[0]
    env.unwrapped.set_task(task)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    while len(out) < n:
        action = int(rng.integers(env.action_space.n))
        nxt, reward, term, trunc, info = env.step(action)
        if not info.get("physics_error", False):
            out.append((obs, action, float(reward), nxt, bool(term)))
        obs = env.reset(seed=seed + len(out))[0] if term or trunc else nxt
    env.close()
    return out


def measure_bundle(
    bundle_dir: Path, sizes: tuple[int, ...], repeats: int, adapt_repeats: int
) -> dict[str, Any]:
    """The timings of one bundle (see the module docstring)."""
    from robometa.deploy import Adapter

    adapter = Adapter.load(bundle_dir, capacity=max(sizes))
    bundle = adapter.bundle
    data = simulated_transitions(bundle.env_id, max(sizes))
    obs = np.asarray(data[0][0], np.float32)

    act_ns = time_calls(lambda: adapter.act(obs), repeats, warmup=min(1000, repeats))

    observe_ns = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        if i % len(data) == 0:
            adapter.reset()  # not timed: the buffer never wraps mid-measurement
        t = clock()
        adapter.observe(*data[i % len(data)])
        observe_ns[i] = clock() - t

    adapt_ms: dict[str, float] = {}
    steps: dict[str, int] = {}
    for n in sizes:
        samples = []
        for _ in range(adapt_repeats + 1):  # the first call warms the session up
            adapter.reset()
            for transition in data[:n]:
                adapter.observe(*transition)
            t = clock()
            report = adapter.adapt()
            samples.append(clock() - t)
        adapt_ms[str(n)] = float(np.median(samples[1:]) / 1e6)
        steps[str(n)] = int(report.steps)
    return {
        "bundle": str(bundle_dir),
        "kind": bundle.kind,
        "algorithm": str(bundle.manifest.get("algorithm", "")),
        "act_p50_us": float(np.percentile(act_ns, 50) / 1e3),
        "act_p99_us": float(np.percentile(act_ns, 99) / 1e3),
        "observe_p50_us": float(np.percentile(observe_ns, 50) / 1e3),
        "adapt_ms": adapt_ms,
        "adapt_steps": steps,
    }


def export_runs(runs: list[Path], into: Path) -> list[Path]:
    """Each run's ``policy.pt`` exported (and verified) to a bundle under ``into``."""
    from robometa.bundle import export_bundle
    from robometa.policy import Policy

    out = []
    for i, run in enumerate(runs):
        policy_file = run / "policy.pt"
        if not policy_file.is_file():
            raise SystemExit(f"--runs {run}: no policy.pt there (train it first)")
        out.append(export_bundle(Policy.load(policy_file), into / f"{i}-{run.name}"))
    return out


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def markdown(entries: list[dict[str, Any]], sizes: tuple[int, ...]) -> str:
    head = "| bundle | kind | act p50 us | observe p50 us | " + " | ".join(
        f"adapt on {n} ms" for n in sizes
    )
    lines = [head + " |", "|" + "---|" * (4 + len(sizes))]
    for e in entries:
        cells = [Path(e["bundle"]).name, e["kind"], f"{e['act_p50_us']:.1f}"]
        cells.append(f"{e['observe_p50_us']:.1f}")
        cells += [
            f"{e['adapt_ms'][str(n)]:.2f} ({_steps(e['adapt_steps'][str(n)])})" for n in sizes
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="trained run directories")
    p.add_argument("--bundles", type=Path, nargs="*", default=[], help="exported bundles")
    p.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="buffered transitions of each timed adapt() call, comma list",
    )
    p.add_argument("--repeats", type=int, default=5000, help="act and observe calls each")
    p.add_argument("--adapt-repeats", type=int, default=20, help="adapt() calls per size")
    args = p.parse_args(argv)
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: expected a comma list of integers, e.g. 10,50,200")
    if not sizes or min(sizes) < 1:
        p.error(f"--sizes {args.sizes!r}: every size must be >= 1")
    if args.repeats < 1 or args.adapt_repeats < 1:
        p.error("--repeats and --adapt-repeats must be >= 1")
    if not args.runs and not args.bundles:
        p.error("give --runs RUN_DIR ... and/or --bundles BUNDLE_DIR ...")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="robometa-latency-") as tmp:
        bundles = [*args.bundles, *export_runs(args.runs, Path(tmp))]
        entries = []
        for i, bundle in enumerate(bundles, 1):
            print(f"[{i}/{len(bundles)}] {bundle}", flush=True)
            entries.append(measure_bundle(bundle, sizes, args.repeats, args.adapt_repeats))
    for e, source in zip(entries, [*args.bundles, *args.runs], strict=True):
        e["source"] = str(source)
        e["bundle"] = str(source)
    doc = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "sizes": list(sizes),
        "bundles": entries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(markdown(entries, sizes))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
