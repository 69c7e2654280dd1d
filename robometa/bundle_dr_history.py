"""The ``history`` bundle kind as the ``dr-history`` family writes it.

:meth:`robometa.methods.dr_history.DRHistoryDQN.write_bundle` calls :func:`write_bundle` and
its ``check_bundle`` calls :func:`check_parity`. The layout is the ``history`` kind's, read
and served unchanged by :mod:`robometa.deploy.history` (what :mod:`robometa.bundle_history`
writes for ``rma``); only what the graphs compute is this family's:

* ``policy.onnx``: ``obs`` + ``context`` (the window features ``z``) + ``param:<name>`` (body
  and Q head) -> ``q_values``, ``action``, traced from
  :func:`robometa.methods.dr_history.dr_history_q`;
* ``history.onnx``: ``window`` (length, width) + ``mask`` (length,) -> ``context``, traced
  from :func:`robometa.methods.dr_history.history_features` (no parameters: the masked
  window, normalized and flattened; an all-zero mask gives the zero vector);
* ``params.npz``: every network parameter;

and the manifest sections ``normalization``, ``network``, ``history`` (with ``"episodic":
true``: the runtime's window is per episode, as this family's memory is) and ``parameters``.
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
from robometa.deploy.bundle import POLICY_GRAPH
from robometa.deploy.history import (
    CONTEXT,
    EPISODIC,
    HISTORY_GRAPH,
    KIND,
    MASK,
    SECTION,
    WINDOW,
)
from robometa.export import _export
from robometa.methods.dr_history import (
    DRHistoryActor,
    DRHistoryQNetwork,
    dr_history_q,
    history_features,
)
from robometa.methods.rma import ordered_window, window_row, window_width
from robometa.networks import Params
from robometa.policy import Policy

#: tolerances of the parity check run after every export (Q-values, relative to max(1, |Q|),
#: and the window features)
Q_TOLERANCE = 1e-5
CONTEXT_TOLERANCE = 1e-5
#: transitions of the parity rollout: more than a window, so the window slides
PARITY_STEPS = 40

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa dr-history policy: obs, window features -> Q-values, greedy action",
    HISTORY_GRAPH: "robometa dr-history window features: window of transitions, mask -> the "
    "masked, normalized, flattened window",
}


def export_policy_graph(net: DRHistoryQNetwork, params: Params, path: Path) -> Path:
    return export_conditioned_policy_graph(
        dr_history_q, net, params, CONTEXT, net.spec.context_dim, path
    )


def export_history_graph(net: DRHistoryQNetwork, path: Path) -> Path:
    def module(window: Tensor, mask: Tensor) -> tuple[Tensor]:
        return (history_features(net, window, mask),)

    spec = net.spec
    gen = torch.Generator().manual_seed(2)
    window = torch.randn(spec.history, window_width(spec), generator=gen)
    mask = torch.ones(spec.history)
    return _export(module, (window, mask), [False, False], [WINDOW, MASK], [CONTEXT], path)


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a history bundle of a dr-history policy into the empty ``root``."""
    net = network_of(policy, DRHistoryQNetwork, KIND, "a dr-history network")
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params)
    export_policy_graph(net, params, root / POLICY_GRAPH)
    export_history_graph(net, root / HISTORY_GRAPH)
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
    assert isinstance(net, DRHistoryQNetwork)
    spec = net.spec
    manifest |= {
        "normalization": normalization_section(net),
        "network": network_section(spec)
        | {"policy_inputs": conditioned_param_names(params), "history_inputs": []},
        SECTION: {
            "length": spec.history,
            "width": window_width(spec),
            "row": "obs, one_hot(action), next_obs - obs",
            "context_dim": spec.context_dim,
            "support_size": int(policy.support_size),
            "empty": "the zero vector (the policy was trained with an empty window at every "
            "episode start: call begin_episode() when an episode starts)",
            # the window is the current episode's: emptied by begin_episode() and after a
            # terminal transition, as in training and robometa eval
            EPISODIC: True,
        },
        "parameters": {k: {"shape": list(v.shape)} for k, v in params.items()},
    }
    return manifest


# --------------------------------------------------------------------------- parity


def parity_rollout(policy: Policy, n: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """``n`` synthetic transitions of one episode ``(obs, action, reward, next_obs,
    terminated)``, each starting where the previous one ended: a mean-reverting walk at
    half a standard deviation of the policy's normalization around its mean."""
    net = policy.net
    gen = torch.Generator().manual_seed(seed)
    mean, std = net.obs_mean, net.obs_std
    obs = mean + 0.5 * std * torch.randn(net.spec.obs_dim, generator=gen)
    out = []
    for _ in range(n):
        noise = torch.randn(net.spec.obs_dim, generator=gen)
        nxt = mean + 0.9 * (obs - mean) + 0.5 * std * 0.44 * noise
        action = int(torch.randint(0, net.spec.n_actions, (1,), generator=gen))
        out.append((obs.numpy().copy(), action, 1.0, nxt.numpy().copy(), False))
        obs = nxt
    return out


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """The runtime against torch over a rollout of :data:`PARITY_STEPS` observed transitions
    (the window fills, then slides; the last one is terminal, after which the window of the
    next episode is empty again), the empty window included: after each one, the
    runtime's window features against :func:`history_features` of the same window (within
    :data:`CONTEXT_TOLERANCE`), its Q-values against torch's under those features (within
    :data:`Q_TOLERANCE` times ``max(1, |Q|)``), and the numpy actor's Q-values and features
    against the runtime's; ``AssertionError`` beyond them. Returns the largest differences."""
    from robometa.deploy.adapter import Adapter

    adapter = Adapter.load(bundle_dir)
    net, params = policy.net, policy.params
    assert isinstance(net, DRHistoryQNetwork)
    spec = net.spec
    rollout = parity_rollout(policy, PARITY_STEPS, seed)
    rollout[-1] = (*rollout[-1][:4], True)  # the episode ends: the window must empty
    probe = torch.from_numpy(np.stack([t[0] for t in rollout[:8]]))
    actor = DRHistoryActor(net, params)
    rows: list[np.ndarray] = []
    z_err = q_err = q_scaled = actor_err = 0.0
    for step in range(len(rollout) + 1):
        window, mask = ordered_window(rows, spec.history, window_width(spec))
        with torch.no_grad():
            z = history_features(net, window, mask)
            # Q of the policy graph on the same inputs: the runtime's own features (their
            # difference from torch's is the history graph's, checked on its own)
            q = dr_history_q(net, params, probe, torch.from_numpy(adapter.context.copy()))
        z_err = max(z_err, float(np.abs(adapter.context - z.numpy()).max()))
        runtime_q = adapter.q_values(probe.numpy())
        diff = np.abs(runtime_q - q.numpy())
        q_err = max(q_err, float(diff.max()))
        q_scaled = max(q_scaled, float((diff / np.maximum(1.0, np.abs(q.numpy()))).max()))
        actor_q = np.stack([actor.q_values(o) for o in probe.numpy()])
        actor_diff = np.abs(actor_q - runtime_q) / np.maximum(1.0, np.abs(runtime_q))
        actor_err = max(
            actor_err, float(np.abs(actor.z - adapter.context).max()), float(actor_diff.max())
        )
        if step == len(rollout):
            break
        obs, action, reward, nxt, term = rollout[step]
        if not adapter.observe(obs, action, reward, nxt, term):
            raise AssertionError(f"{bundle_dir}: the runtime rejected parity transition {step}")
        actor.observe(obs, action, reward, nxt, term)
        rows.append(window_row(obs, action, nxt, spec.n_actions))
        if term:
            rows.clear()
    if z_err > CONTEXT_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: the window features differ from torch by {z_err}")
    if q_scaled > Q_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: Q-values differ from torch by {q_err} ({q_scaled} relative to "
            "max(1, |Q|))"
        )
    if actor_err > CONTEXT_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: the numpy actor differs from the runtime by {actor_err}"
        )
    return {"context": z_err, "q_values": q_err, "q_values_scaled": q_scaled, "actor": actor_err}
