"""The ``history`` bundle kind, writer side: what the ``rma`` family exports.

:meth:`robometa.methods.rma.RMALearner.write_bundle` calls :func:`write_bundle` and its
``check_bundle`` calls :func:`check_parity`; the generic writer
(:func:`robometa.bundle.export_bundle`) owns the directory, the shared manifest sections, the
files table, fsync and verification. A history bundle holds

* ``policy.onnx``: ``obs`` + ``context`` + ``param:<name>`` (body and Q head) -> ``q_values``,
  ``action``;
* ``history.onnx``: ``param:history_*`` + ``window`` (length, width) + ``mask`` (length,) ->
  ``context``, traced from :func:`robometa.methods.rma.history_context` (an all-zero mask
  gives ``param:history_prior``, the empty window's extrinsics);
* ``params.npz``: every network parameter (the teacher's too: the graphs do not read it);

and adds the manifest sections ``normalization``, ``network``, ``history`` and
``parameters``. The layout and names are the reader's, :mod:`robometa.deploy.history`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robometa.bundle import shared_manifest
from robometa.bundle_parts import (
    conditioned_param_names,
    export_conditioned_policy_graph,
    finish_graphs,
    network_of,
    network_section,
    normalization_section,
    save_params,
)
from robometa.deploy.bundle import PARAM_PREFIX, POLICY_GRAPH
from robometa.deploy.history import CONTEXT, HISTORY_GRAPH, KIND, MASK, SECTION, WINDOW
from robometa.export import _export
from robometa.methods.rma import (
    HistoryActor,
    RMAQNetwork,
    history_context,
    history_params,
    ordered_window,
    rma_q,
    window_row,
    window_width,
)
from robometa.networks import Params
from robometa.policy import Policy

#: tolerances of the parity check run after every export (Q-values and the extrinsics)
Q_TOLERANCE = 1e-5
CONTEXT_TOLERANCE = 1e-5
#: transitions of the parity rollout: more than a window, so the window slides
PARITY_STEPS = 40

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa rma policy: obs, extrinsics -> Q-values, greedy action",
    HISTORY_GRAPH: "robometa rma adaptation module: window of transitions, mask -> extrinsics",
}


def export_policy_graph(net: RMAQNetwork, params: Params, path: Path) -> Path:
    return export_conditioned_policy_graph(rma_q, net, params, CONTEXT, net.spec.context_dim, path)


def export_history_graph(net: RMAQNetwork, params: Params, path: Path) -> Path:
    names = list(history_params(params))

    def module(*args: Tensor) -> tuple[Tensor]:
        p = dict(zip(names, args[: len(names)], strict=True))
        window, mask = args[len(names) :]
        return (history_context(net, p, window, mask),)

    spec = net.spec
    gen = torch.Generator().manual_seed(2)
    window = torch.randn(spec.history, window_width(spec), generator=gen)
    mask = torch.ones(spec.history)
    args = (*(params[k].detach().float() for k in names), window, mask)
    return _export(
        module,
        args,
        [False] * (len(names) + 2),
        [PARAM_PREFIX + k for k in names] + [WINDOW, MASK],
        [CONTEXT],
        path,
    )


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a history bundle (graphs, arrays, ``manifest.json``) into the empty ``root``."""
    net = network_of(policy, RMAQNetwork, KIND, "an rma network")
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params)
    export_policy_graph(net, params, root / POLICY_GRAPH)
    export_history_graph(net, params, root / HISTORY_GRAPH)
    save_params(root, params)
    extra = {
        "robometa.context_dim": str(net.spec.context_dim),
        "robometa.history": str(net.spec.history),
    }
    graphs = {"policy": POLICY_GRAPH, "history": HISTORY_GRAPH}
    finish_graphs(root, manifest, graphs, _DOC_STRINGS, extra, run_dir)


def build_manifest(policy: Policy, params: Params) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files``: the shared sections and the history kind's."""
    manifest = shared_manifest(policy, KIND)
    net = policy.net
    assert isinstance(net, RMAQNetwork)
    spec = net.spec
    manifest |= {
        "normalization": normalization_section(net),
        "network": network_section(spec)
        | {
            "extrinsics_dim": spec.extrinsics_dim,
            "policy_inputs": conditioned_param_names(params),
            "history_inputs": list(history_params(params)),
        },
        SECTION: {
            "length": spec.history,
            "width": window_width(spec),
            "row": "obs, one_hot(action), next_obs - obs",
            "context_dim": spec.context_dim,
            "support_size": int(policy.support_size),
            "empty": "the empty window's estimate (history_prior: the mean extrinsics of the "
            "training robots)",
        },
        "parameters": {k: {"shape": list(v.shape)} for k, v in params.items()},
    }
    return manifest


# --------------------------------------------------------------------------- parity


def parity_rollout(policy: Policy, n: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """``n`` synthetic transitions ``(obs, action, reward, next_obs, terminated)`` at the
    scale of the policy's normalization, inside the observation bounds of CartPole-sized
    robots (a few standard deviations)."""
    net = policy.net
    gen = torch.Generator().manual_seed(seed)
    obs = net.obs_mean + 0.5 * net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    nxt = obs + net.delta_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    actions = torch.randint(0, net.spec.n_actions, (n,), generator=gen)
    return [(obs[i].numpy(), int(actions[i]), 1.0, nxt[i].numpy(), False) for i in range(n)]


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """The runtime against torch over a rollout of :data:`PARITY_STEPS` observed transitions
    (the window fills, then slides): after each one, the runtime's extrinsics against
    :func:`robometa.methods.rma.history_context` of the same window (within
    :data:`CONTEXT_TOLERANCE`) and its Q-values against torch's under the same extrinsics
    (each graph on the same inputs), the empty window's included; raise ``AssertionError``
    beyond them. Q's tolerance is :data:`Q_TOLERANCE` times ``max(1, |Q|)``: a trained
    CartPole Q is ~100, where one float32 step is 7.6e-6, so an absolute 1e-5 would be one
    rounding step of a reordered sum. Returns the largest differences."""
    from robometa.deploy.adapter import Adapter

    adapter = Adapter.load(bundle_dir)
    net, params = policy.net, policy.params
    assert isinstance(net, RMAQNetwork)
    spec = net.spec
    rollout = parity_rollout(policy, PARITY_STEPS, seed)
    probe = torch.from_numpy(np.stack([t[0] for t in rollout[:8]]))
    rows: list[np.ndarray] = []
    z_err = q_err = q_scaled = 0.0
    for step in range(len(rollout) + 1):
        window, mask = ordered_window(rows, spec.history, window_width(spec))
        with torch.no_grad():
            z = history_context(net, params, window, mask)
            # Q of the policy graph on the same inputs: the runtime's own extrinsics (their
            # difference from torch's is the history graph's, checked on its own)
            q = rma_q(net, params, probe, torch.from_numpy(adapter.context.copy()))
        z_err = max(z_err, float(np.abs(adapter.context - z.numpy()).max()))
        diff = np.abs(adapter.q_values(probe.numpy()) - q.numpy())
        q_err = max(q_err, float(diff.max()))
        q_scaled = max(q_scaled, float((diff / np.maximum(1.0, np.abs(q.numpy()))).max()))
        if step == len(rollout):
            break
        obs, action, reward, nxt, term = rollout[step]
        if not adapter.observe(obs, action, reward, nxt, term):
            raise AssertionError(f"{bundle_dir}: the runtime rejected parity transition {step}")
        rows.append(window_row(obs, action, nxt, spec.n_actions))
    if z_err > CONTEXT_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: the extrinsics differ from torch by {z_err}")
    if q_scaled > Q_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: Q-values differ from torch by {q_err} ({q_scaled} relative to "
            "max(1, |Q|))"
        )
    actor = HistoryActor(net, params, rows)
    actor_err = float(np.abs(actor.z - adapter.context).max())
    if actor_err > CONTEXT_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: the numpy actor's extrinsics differ from the runtime's by {actor_err}"
        )
    return {"context": z_err, "q_values": q_err, "q_values_scaled": q_scaled}
