"""The ``gradient`` bundle kind, writer side: what every builtin method family exports.

:meth:`robometa.methods.base.Method.write_bundle` calls :func:`write_bundle` and
:meth:`~robometa.methods.base.Method.check_bundle` calls :func:`check_parity` (the rsl_rl
``as_onnx`` pattern: the family owns what its bundle holds); the generic writer,
:func:`robometa.bundle.export_bundle`, owns the output directory, the manifest's shared
sections, the files table, fsync and verification. A gradient bundle holds

* ``policy.onnx``: ``obs`` + ``param:<name>`` -> ``q_values``, ``action``;
* ``adapt.onnx``: one inner gradient step (``param:``, ``lr:``, a transition batch, ``gamma``
  -> ``new:<name>``, ``loss``), traced by :mod:`robometa.export`;
* ``params.npz``, ``lrs.npz``: the meta-parameters and the inner learning rates;

and adds the manifest sections ``discount``, ``normalization``, ``network``, ``inner``,
``parameters`` and ``graphs`` (``policy``, ``adapt``). The layout and names are defined by the
reader, :mod:`robometa.deploy.bundle`.

Methods that do not adapt (empty ``policy.lrs``, e.g. the privileged oracle) still get an
``adapt.onnx``: plain fine-tuning of every parameter with the TD inner loss and the learning
rate ``adaptation.fine_tune_lr`` of the run config (default 1e-3), and ``inner.fine_tune`` is
true in the manifest (:func:`adaptation_of`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robometa.adaptation import Batch, InnerLoss, adapt_step
from robometa.bundle import shared_manifest
from robometa.bundle_parts import finish_graphs, network_section, normalization_section, save_params
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    LOSS_OUTPUT,
    LR_PREFIX,
    LRS_FILE,
    NEW_PREFIX,
    PARAM_PREFIX,
    POLICY_GRAPH,
    Bundle,
)
from robometa.export import export_adapt_graph, export_policy_graph, policy_param_names
from robometa.networks import Params, q_values
from robometa.policy import Policy

#: the manifest's ``kind`` of the bundles this module writes
KIND = "gradient"
DEFAULT_FINE_TUNE_LR = 1e-3
#: tolerances of the parity check run after every export.
Q_TOLERANCE = 1e-5
PARAM_TOLERANCE = 1e-4

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa policy: obs -> Q-values, greedy action",
    ADAPT_GRAPH: "robometa adaptation step: params, lrs, transitions, gamma -> new params, loss",
}


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


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a gradient bundle (graphs, arrays, ``manifest.json``) into the empty ``root``."""
    lrs, inner, fine_tune = adaptation_of(policy)
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params, lrs, inner, fine_tune)  # first: it checks shapes
    export_policy_graph(policy.net, params, root / POLICY_GRAPH)
    export_adapt_graph(policy.net, params, lrs, inner, root / ADAPT_GRAPH)
    save_params(root, params)
    np.savez(root / LRS_FILE, **{k: v.numpy().astype(np.float32) for k, v in lrs.items()})
    extra = {
        "robometa.inner_kind": manifest["inner"]["kind"],
        "robometa.adapted": ",".join(manifest["inner"]["adapted"]),
    }
    graphs = {"policy": POLICY_GRAPH, "adapt": ADAPT_GRAPH}
    finish_graphs(root, manifest, graphs, _DOC_STRINGS, extra, run_dir)


def build_manifest(
    policy: Policy, params: Params, lrs: Params, inner: InnerLoss, fine_tune: bool
) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files`` (those need the written files): the shared
    sections (:func:`robometa.bundle.shared_manifest`) and the gradient kind's."""
    manifest = shared_manifest(policy, KIND)
    spec, net = policy.net.spec, policy.net
    manifest |= {
        "discount": float(inner.gamma),
        "normalization": normalization_section(net),
        "network": network_section(spec)
        | {
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
    }
    return manifest


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


# --------------------------------------------------------------------------- parity


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Compare a written bundle with torch; raise ``AssertionError`` beyond the tolerances.

    Returns the largest absolute differences (``q_values``, ``adapted_params``) for reporting.
    """
    bundle = Bundle.load(bundle_dir)
    lrs, inner, _ = adaptation_of(policy)
    net = policy.net
    params = {k: v.detach().float() for k, v in policy.params.items()}
    gen = torch.Generator().manual_seed(seed)
    obs = net.obs_mean + net.obs_std * torch.randn(7, net.spec.obs_dim, generator=gen)
    pol = cpu_session(bundle.file(POLICY_GRAPH))
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
    ad = cpu_session(bundle.file(ADAPT_GRAPH))
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


def cpu_session(path: Path) -> Any:
    """An onnxruntime session of the graph at ``path`` on one CPU thread (the parity
    check's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])


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
