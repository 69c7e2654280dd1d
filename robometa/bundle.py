"""The bundle format, writer side: ``export_bundle(run_dir or policy, out_dir)``.

The layout, file names, graph input/output names and the format version are defined once in
:mod:`robometa.deploy.bundle` (the reader); this module fills them in from a trained
:class:`~robometa.policy.Policy` and verifies the result with that same reader.

``manifest.json`` keys:

| key | content |
|---|---|
| ``format_version`` | layout version (readers refuse others) |
| ``env_id``, ``algorithm``, ``privileged`` | the robot family, the method, whether the observation carries the true dynamics (oracle) |
| ``observation`` | ``shape``, ``dtype``, ``low``, ``high`` (``null`` = unbounded), ``names``; for a privileged policy the normalized dynamics parameters are appended as ``dynamics:<name>`` |
| ``action`` | ``n`` and ``names`` of the discrete actions |
| ``discount`` | the ``gamma`` fed to ``adapt.onnx`` |
| ``normalization`` | ``obs_mean``, ``obs_std``, ``delta_std`` (already inside the graphs; informational) |
| ``network`` | the network spec (hidden sizes, context size, activation) |
| ``inner`` | ``kind`` (td, model, td+model), ``huber_delta``, ``model_weight``, ``steps``, ``support_size``, ``adapted`` (parameter names), ``lr`` (per adapted parameter: a number, or ``{per_parameter, shape, min, max, mean}`` for Meta-SGD), ``fine_tune`` (true when the policy had no learning rates and the export added plain fine-tuning), ``from_meta`` (true: every ``adapt`` starts from the meta-parameters, as in meta-training) |
| ``parameters`` | name -> ``shape``, ``adapted`` |
| ``graphs`` | per graph: file, inputs, outputs, opset |
| ``dynamics`` | ``family``, ``overrides`` (the run's range overrides) and ``params`` (the dynamics space, overrides applied) |
| ``config`` | the run's training config |
| ``producer`` | versions of robometa, torch, onnx, onnxruntime, python |
| ``files`` | name -> ``sha256``, ``bytes`` for every other file |

Methods that do not adapt (empty ``policy.lrs``, e.g. the privileged oracle) still get an
``adapt.onnx``: plain fine-tuning of every parameter with the TD inner loss and the learning
rate ``adaptation.fine_tune_lr`` of the run config (default 1e-3), and ``inner.fine_tune`` is
true in the manifest. Their ``inner.steps`` stays the policy's (0 for the oracle), so
``adapt()`` needs an explicit step count.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from robometa import __version__
from robometa.adaptation import Batch, InnerLoss, adapt_step
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    CONFIG_FILE,
    FORMAT_VERSION,
    LOSS_OUTPUT,
    LR_PREFIX,
    LRS_FILE,
    MANIFEST_FILE,
    NEW_PREFIX,
    PARAM_PREFIX,
    PARAMS_FILE,
    POLICY_GRAPH,
    Bundle,
    sha256_file,
)
from robometa.export import export_adapt_graph, export_policy_graph, policy_param_names
from robometa.networks import Params, q_values
from robometa.policy import Policy

DEFAULT_FINE_TUNE_LR = 1e-3
#: tolerances of the parity check run after every export.
Q_TOLERANCE = 1e-5
PARAM_TOLERANCE = 1e-4


def fine_tune_lr(config: dict[str, Any]) -> float:
    """``adaptation.fine_tune_lr`` of a run config (or a top-level ``fine_tune_lr``)."""
    adaptation = config.get("adaptation")
    value = config.get("fine_tune_lr", DEFAULT_FINE_TUNE_LR)
    if isinstance(adaptation, dict) and "fine_tune_lr" in adaptation:
        value = adaptation["fine_tune_lr"]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0:
        raise ValueError(f"config fine_tune_lr must be a positive number, got {value!r}")
    return float(value)


def adaptation_of(policy: Policy) -> tuple[Params, InnerLoss, bool]:
    """The learning rates and inner loss the bundle exports, and whether it is fine-tuning.

    A method with learning rates exports them as trained (the trainer's DQN policies already
    carry plain fine-tuning rates). A method without (``lrs`` empty, e.g. the oracle) exports
    fine-tuning of every parameter with the TD loss at the config's ``fine_tune_lr``.
    """
    if policy.lrs:
        lrs = {k: v.detach().float() for k, v in policy.lrs.items()}
        return lrs, policy.inner, False
    lr = fine_tune_lr(policy.config)
    inner = InnerLoss(
        kind="td",
        gamma=policy.inner.gamma,
        huber_delta=policy.inner.huber_delta,
        model_weight=policy.inner.model_weight,
    )
    return {k: torch.tensor(lr) for k in policy.params}, inner, True


def export_bundle(
    policy_or_run_dir: Policy | str | Path, out_dir: str | Path, verify: bool = True
) -> Path:
    """Write a bundle for a trained policy (or ``RUN_DIR/policy.pt``) to ``out_dir``.

    The bundle is assembled in a temporary sibling directory and moved into place at the end,
    so a failed export never leaves a half-written bundle. An existing ``out_dir`` is replaced
    only if it is empty or itself a bundle (has a ``manifest.json``). With ``verify`` the
    written bundle is read back with the runtime's reader and checked against torch
    (Q-values within 1e-5, one adaptation step within 1e-4); a mismatch raises.
    """
    run_dir: Path | None = None
    if isinstance(policy_or_run_dir, Policy):
        policy = policy_or_run_dir
    else:
        run_dir = Path(policy_or_run_dir)
        policy = Policy.load(run_dir)
    out = Path(out_dir)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be copied and shared
    try:
        _write(policy, tmp, run_dir)
        if verify:
            check_parity(policy, tmp)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"bundle output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
        raise FileExistsError(
            f"bundle output {out} is a non-empty directory without {MANIFEST_FILE}; "
            "refusing to overwrite something that is not a bundle"
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def _write(policy: Policy, root: Path, run_dir: Path | None) -> None:
    lrs, inner, fine_tune = adaptation_of(policy)
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params, lrs, inner, fine_tune)  # first: it checks shapes
    export_policy_graph(policy.net, params, root / POLICY_GRAPH)
    export_adapt_graph(policy.net, params, lrs, inner, root / ADAPT_GRAPH)
    np.savez(root / PARAMS_FILE, **{k: v.numpy() for k, v in params.items()})
    np.savez(root / LRS_FILE, **{k: v.numpy().astype(np.float32) for k, v in lrs.items()})
    if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        shutil.copyfile(run_dir / CONFIG_FILE, root / CONFIG_FILE)
    for name in (POLICY_GRAPH, ADAPT_GRAPH):
        _finish_graph(root / name, manifest, name)
    manifest["graphs"] = {
        "policy": _graph_entry(root / POLICY_GRAPH),
        "adapt": _graph_entry(root / ADAPT_GRAPH),
    }
    manifest["files"] = {
        f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in sorted(root.iterdir())
        if f.name != MANIFEST_FILE
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _finish_graph(path: Path, manifest: dict[str, Any], name: str) -> None:
    """Stamp ONNX ``metadata_props`` and run the full checker on a written graph."""
    model = onnx.load(str(path))
    props = {
        "robometa.format_version": str(FORMAT_VERSION),
        "robometa.graph": name,
        "robometa.env_id": manifest["env_id"],
        "robometa.algorithm": manifest["algorithm"],
        "robometa.privileged": json.dumps(manifest["privileged"]),
        "robometa.inner_kind": manifest["inner"]["kind"],
        "robometa.adapted": ",".join(manifest["inner"]["adapted"]),
        "robometa.version": __version__,
    }
    onnx.helper.set_model_props(model, props)
    model.doc_string = (
        "robometa policy: obs -> Q-values, greedy action"
        if name == POLICY_GRAPH
        else "robometa adaptation step: params, lrs, transitions, gamma -> new params, loss"
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _graph_entry(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path))
    return {
        "file": path.name,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version,
    }


def _json_bound(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def build_manifest(
    policy: Policy, params: Params, lrs: Params, inner: InnerLoss, fine_tune: bool
) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files`` (those need the written files)."""
    import gymnasium as gym

    import robometa.envs  # noqa: F401  (registers the robot families)

    try:
        env = gym.make(policy.env_id)
    except gym.error.Error as err:
        raise ValueError(f"policy env_id {policy.env_id!r} cannot be made: {err}") from None
    try:
        base = env.unwrapped
        space = base.dynamics_space
        if policy.dynamics:
            space = space.with_overrides(policy.dynamics)
        box = env.observation_space
        names = list(getattr(base, "observation_names", ())) or [
            f"obs_{i}" for i in range(box.shape[0])
        ]
        low = [_json_bound(v) for v in box.low.tolist()]
        high = [_json_bound(v) for v in box.high.tolist()]
        action_names = list(getattr(base, "action_names", ())) or [
            f"action_{i}" for i in range(env.action_space.n)
        ]
        n_actions = int(env.action_space.n)
    finally:
        env.close()
    if policy.privileged:
        names += [f"dynamics:{n}" for n in space.names]
        low += [None] * len(space)
        high += [None] * len(space)
    spec = policy.net.spec
    if spec.obs_dim != len(names) or spec.n_actions != n_actions:
        raise ValueError(
            f"policy network takes obs_dim={spec.obs_dim}, n_actions={spec.n_actions}, but "
            f"{policy.env_id} has obs_dim={len(names)}"
            f"{' (with the dynamics appended)' if policy.privileged else ''}, "
            f"n_actions={n_actions}"
        )
    net = policy.net
    return {
        "format_version": FORMAT_VERSION,
        "env_id": policy.env_id,
        "algorithm": policy.algorithm,
        "privileged": bool(policy.privileged),
        "observation": {
            "shape": [spec.obs_dim],
            "dtype": "float32",
            "low": low,
            "high": high,
            "names": names,
        },
        "action": {"n": n_actions, "names": action_names},
        "discount": float(inner.gamma),
        "normalization": {
            "obs_mean": net.obs_mean.tolist(),
            "obs_std": net.obs_std.tolist(),
            "delta_std": net.delta_std.tolist(),
        },
        "network": {
            "obs_dim": spec.obs_dim,
            "n_actions": spec.n_actions,
            "hidden": list(spec.hidden),
            "context_dim": spec.context_dim,
            "activation": spec.activation,
            "policy_inputs": policy_param_names(params),
        },
        "inner": {
            "kind": inner.kind,
            "huber_delta": inner.huber_delta,
            "model_weight": inner.model_weight,
            "steps": int(policy.adapt_steps),
            "support_size": int(policy.support_size),
            "adapted": list(lrs),
            "lr": {k: _lr_summary(v) for k, v in lrs.items()},
            "fine_tune": fine_tune,
            # Meta-learned inner loops were trained to start from the meta-parameters on
            # fresh support data; fine-tuning continues from wherever it is.
            "from_meta": not fine_tune,
        },
        "parameters": {k: {"shape": list(v.shape), "adapted": k in lrs} for k, v in params.items()},
        "dynamics": {
            "family": space.family,
            "overrides": policy.dynamics,
            "params": space.to_json(),
        },
        "config": policy.config,
        "producer": _producer(),
    }


def _lr_summary(lr: torch.Tensor) -> float | dict[str, Any]:
    if lr.dim() == 0:
        return float(lr)
    return {
        "per_parameter": True,
        "shape": list(lr.shape),
        "min": float(lr.min()),
        "max": float(lr.max()),
        "mean": float(lr.mean()),
    }


def _producer() -> dict[str, str]:
    import onnxruntime

    return {
        "robometa": __version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- parity


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Compare a written bundle with torch; raise ``AssertionError`` beyond the tolerances.

    Returns the largest absolute differences (``q_values``, ``adapted_params``) for reporting.
    """
    import onnxruntime as ort

    bundle = Bundle.load(bundle_dir)
    lrs, inner, _ = adaptation_of(policy)
    net = policy.net
    params = {k: v.detach().float() for k, v in policy.params.items()}
    gen = torch.Generator().manual_seed(seed)
    obs = net.obs_mean + net.obs_std * torch.randn(7, net.spec.obs_dim, generator=gen)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    pol = ort.InferenceSession(str(bundle.file(POLICY_GRAPH)), options, ["CPUExecutionProvider"])
    feeds = _feeds(pol, bundle.params, obs=obs.numpy())
    q_ort, a_ort = pol.run(None, feeds)
    with torch.no_grad():
        q_torch = q_values(net, params, obs)
    q_err = float(np.abs(q_ort - q_torch.numpy()).max())
    if q_err > Q_TOLERANCE or not np.array_equal(a_ort, q_torch.argmax(1).numpy()):
        raise AssertionError(f"{bundle.file(POLICY_GRAPH)}: Q-values differ from torch by {q_err}")
    n = 9
    b_obs = net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    batch = Batch(
        b_obs,
        torch.randint(0, net.spec.n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        b_obs + 0.1 * net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen),
        (torch.rand(n, generator=gen) < 0.2).float(),
    )
    with torch.no_grad():
        new_torch, loss_torch = adapt_step(net, params, lrs, batch, inner)
    ad = ort.InferenceSession(str(bundle.file(ADAPT_GRAPH)), options, ["CPUExecutionProvider"])
    feeds = _feeds(
        ad,
        bundle.params,
        lrs=bundle.lrs,
        obs=batch.obs.numpy(),
        action=batch.action.numpy(),
        reward=batch.reward.numpy(),
        next_obs=batch.next_obs.numpy(),
        terminated=batch.terminated.numpy(),
        gamma=np.float32(bundle.discount),
    )
    outputs = dict(zip([o.name for o in ad.get_outputs()], ad.run(None, feeds), strict=True))
    p_err = max(
        float(np.abs(outputs[NEW_PREFIX + k] - new_torch[k].numpy()).max()) for k in bundle.adapted
    )
    loss_err = abs(float(outputs[LOSS_OUTPUT]) - float(loss_torch))
    if p_err > PARAM_TOLERANCE or loss_err > PARAM_TOLERANCE:
        raise AssertionError(
            f"{bundle.file(ADAPT_GRAPH)}: adapted parameters differ from torch by {p_err}, "
            f"loss by {loss_err}"
        )
    return {"q_values": q_err, "adapted_params": p_err, "loss": loss_err}


def _feeds(
    session: Any,
    params: dict[str, np.ndarray],
    lrs: dict[str, np.ndarray] | None = None,
    **data: Any,
) -> dict[str, np.ndarray]:
    """Feed every input the session declares, by its prefix."""
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        if i.name.startswith(PARAM_PREFIX):
            feeds[i.name] = params[i.name.removeprefix(PARAM_PREFIX)]
        elif i.name.startswith(LR_PREFIX):
            feeds[i.name] = (lrs or {})[i.name.removeprefix(LR_PREFIX)]
        else:
            feeds[i.name] = np.asarray(data[i.name])
    return feeds
