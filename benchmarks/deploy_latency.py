"""Deploy runtime latency and footprint, side by side with torch in one run.

Measures, on the same network and the same inputs:

* ``act``: one observation -> greedy action, ``Adapter.act`` (onnxruntime, IOBinding) vs the
  Q-network in torch eager (``torch.set_num_threads(1)``, no grad); p50 and p99 latency;
* one adaptation step on 64 and 256 transitions: ``adapt.onnx`` through ``Adapter.step`` vs
  torch ``adapt_step``;
* a fresh process that imports the runtime, loads the bundle and acts, vs the same process
  that also imports torch: peak RSS and import time.

Every entry of the JSON has ``measured`` (the runtime), ``baseline`` (torch), ``ratio``
(baseline / measured: > 1 means the runtime is better), ``target`` and ``pass``. Timings are
medians (or percentiles) over repeats.

    python benchmarks/deploy_latency.py --out bench-results/deploy_latency.json

Without ``--bundle`` it exports a randomly initialized CAVIA-shaped policy (64x64 MLP,
td+model inner loss) for CartPole first; with ``--bundle`` the torch baseline is rebuilt from
the bundle's own parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {
    "act_p50_us": 15.0,
    "act_speedup_vs_torch": 3.0,
    "adapt_step_256_ms": 1.0,
    "rss_mb": 80.0,
    "import_s": 0.3,
}

FOOTPRINT_SCRIPT = """
import json, resource, sys, time
t0 = time.perf_counter()
if sys.argv[2] == "torch":
    import torch
from robometa.deploy import Adapter
t_import = time.perf_counter() - t0
adapter = Adapter.load(sys.argv[1])
action = adapter.act([0.0] * adapter.obs_dim)
t_total = time.perf_counter() - t0
try:  # peak RSS of this image; ru_maxrss can carry the parent's peak over fork + exec
    with open("/proc/self/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except OSError:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"import_s": t_import, "total_s": t_total, "rss_mb": rss_kb / 1024}))
"""


def percentile_us(samples_ns: np.ndarray, q: float) -> float:
    return float(np.percentile(samples_ns, q) / 1000.0)


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


def torch_policy_from_bundle(bundle):
    """The bundle's network, parameters, learning rates and inner loss, rebuilt in torch."""
    import torch

    from robometa.adaptation import InnerLoss
    from robometa.networks import NetworkSpec, QNetwork

    m = bundle.manifest
    net_info = m["network"]
    spec = NetworkSpec(
        obs_dim=net_info["obs_dim"],
        n_actions=net_info["n_actions"],
        hidden=tuple(net_info["hidden"]),
        context_dim=net_info["context_dim"],
        activation=net_info["activation"],
    )
    net = QNetwork(spec)
    norm = {k: torch.tensor(v) for k, v in m["normalization"].items()}
    net.set_normalization(norm["obs_mean"], norm["obs_std"], norm["delta_std"])
    params = {k: torch.from_numpy(v.copy()) for k, v in bundle.params.items()}
    lrs = {k: torch.from_numpy(np.array(v)) for k, v in bundle.lrs.items()}
    inner = m["inner"]
    loss = InnerLoss(
        kind=inner["kind"],
        gamma=m["discount"],
        huber_delta=inner["huber_delta"],
        model_weight=inner["model_weight"],
    )
    return net, params, lrs, loss


def measure_act(adapter, net, params, repeats: int) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(0)
    obs = (0.05 * rng.standard_normal(adapter.obs_dim)).astype(np.float32)
    ort_ns = time_calls(lambda: adapter.act(obs), repeats, warmup=min(2000, repeats))
    # The strongest eager baseline: parameters loaded into the module, only the Q path (the
    # exported graph drops the unused dynamics head too), no functional_call overhead.
    net.load_state_dict({**params, **dict(net.named_buffers())})
    net.eval()

    def torch_act() -> int:
        with torch.no_grad():
            obs_t = torch.from_numpy(obs)[None]
            return int(net.q_head(net.features(obs_t)).argmax(1).item())

    assert torch_act() == adapter.act(obs), "torch and onnxruntime disagree on the action"
    torch_ns = time_calls(torch_act, repeats, warmup=min(2000, repeats))
    return {
        "p50": (percentile_us(ort_ns, 50), percentile_us(torch_ns, 50)),
        "p99": (percentile_us(ort_ns, 99), percentile_us(torch_ns, 99)),
    }


def measure_adapt(
    adapter, net, params, lrs, inner, batch: int, repeats: int
) -> tuple[float, float]:
    """Median ms of one adaptation step: onnxruntime vs torch."""
    import torch
    from robometa.deploy.runtime import Transitions

    from robometa.adaptation import Batch, adapt_step

    rng = np.random.default_rng(batch)
    obs = (0.05 * rng.standard_normal((batch, adapter.obs_dim))).astype(np.float32)
    data = Transitions(
        obs,
        rng.integers(0, adapter.n_actions, batch).astype(np.int64),
        np.ones(batch, np.float32),
        (obs + 0.01 * rng.standard_normal(obs.shape)).astype(np.float32),
        (rng.random(batch) < 0.05).astype(np.float32),
    )
    current = adapter.params
    ort_ns = time_calls(lambda: adapter.step(current, data), repeats, warmup=5)
    tbatch = Batch(*(torch.from_numpy(a) for a in data))

    def torch_step() -> None:
        with torch.no_grad():
            adapt_step(net, params, lrs, tbatch, inner)

    torch_ns = time_calls(torch_step, repeats, warmup=5)
    return float(np.median(ort_ns) / 1e6), float(np.median(torch_ns) / 1e6)


def measure_footprint(bundle_dir: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Median import time and peak RSS of a fresh process, runtime only vs with torch."""
    runs: dict[str, list[dict[str, float]]] = {"runtime": [], "torch": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(repeats):
        for mode in runs:
            out = subprocess.run(
                [sys.executable, "-c", FOOTPRINT_SCRIPT, str(bundle_dir), mode],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {
        mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()
    }
    return {k: (med["runtime"][k], med["torch"][k]) for k in ("import_s", "total_s", "rss_mb")}


def entry(measured: float, baseline: float, target: str | None, ok: bool | None) -> dict[str, Any]:
    return {
        "measured": measured,
        "baseline": baseline,
        "ratio": baseline / measured if measured > 0 else None,
        "target": target,
        "pass": ok,
    }


def export_default_bundle(out: Path, hidden: tuple[int, ...]) -> Path:
    from robometa.bundle import export_bundle
    from robometa.testing import random_policy

    return export_bundle(random_policy("cavia", "td+model", hidden=hidden, seed=0), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to measure")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="(no --bundle)")
    parser.add_argument("--repeats", type=int, default=20000, help="act calls per side")
    parser.add_argument("--adapt-repeats", type=int, default=200, help="adapt steps per side")
    parser.add_argument("--process-repeats", type=int, default=3, help="fresh processes per side")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch
    from robometa.deploy import Adapter

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = args.bundle or export_default_bundle(Path(tmp) / "bundle", tuple(args.hidden))
        adapter = Adapter.load(bundle_dir)
        net, params, lrs, inner = torch_policy_from_bundle(adapter.bundle)
        act = measure_act(adapter, net, params, args.repeats)
        adapt64 = measure_adapt(adapter, net, params, lrs, inner, 64, args.adapt_repeats)
        adapt256 = measure_adapt(adapter, net, params, lrs, inner, 256, args.adapt_repeats)
        footprint = measure_footprint(Path(bundle_dir), args.process_repeats)
        bundle_info = {
            "path": str(args.bundle) if args.bundle else "(random cavia policy)",
            "algorithm": adapter.bundle.manifest["algorithm"],
            "network": adapter.bundle.manifest["network"]["hidden"],
            "inner": adapter.bundle.manifest["inner"]["kind"],
            "adapted": list(adapter.adapted),
        }

    p50, p99 = act["p50"], act["p99"]
    speedup = p50[1] / p50[0]
    results = {
        "act_p50_us": entry(
            *p50,
            f"< {TARGETS['act_p50_us']:g} us and >= {TARGETS['act_speedup_vs_torch']:g}x "
            "faster than torch eager",
            p50[0] < TARGETS["act_p50_us"] and speedup >= TARGETS["act_speedup_vs_torch"],
        ),
        "act_p99_us": entry(*p99, None, None),
        "adapt_step_64_ms": entry(*adapt64, None, None),
        "adapt_step_256_ms": entry(
            *adapt256,
            f"< {TARGETS['adapt_step_256_ms']:g} ms",
            adapt256[0] < TARGETS["adapt_step_256_ms"],
        ),
        "process_rss_mb": entry(
            *footprint["rss_mb"],
            f"< {TARGETS['rss_mb']:g} MB",
            footprint["rss_mb"][0] < TARGETS["rss_mb"],
        ),
        "process_import_s": entry(
            *footprint["import_s"],
            f"< {TARGETS['import_s']:g} s",
            footprint["import_s"][0] < TARGETS["import_s"],
        ),
        "process_total_s": entry(*footprint["total_s"], None, None),
    }
    doc = {
        "benchmark": "deploy_latency",
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "baseline": (
            "torch eager, same network and inputs, torch.set_num_threads(1); act: the module "
            "with its parameters loaded (Q path only); adapt: robometa.adaptation.adapt_step"
        ),
        "ratio": "baseline / measured (> 1: the runtime is faster or smaller)",
        "bundle": bundle_info,
        "repeats": {
            "act": args.repeats,
            "adapt": args.adapt_repeats,
            "processes": args.process_repeats,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "torch": str(torch.__version__),
            "numpy": np.__version__,
        },
        "results": results,
        "all_pass": all(r["pass"] for r in results.values() if r["pass"] is not None),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'metric':20} {'runtime':>10} {'torch':>10} {'ratio':>7}  target")
    for name, r in results.items():
        verdict = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        print(
            f"{name:20} {r['measured']:10.4g} {r['baseline']:10.4g} {r['ratio']:7.2f}  "
            f"{r['target'] or '-'} {verdict}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
