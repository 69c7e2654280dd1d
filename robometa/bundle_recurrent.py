"""The ``recurrent`` bundle kind, writer side: what the ``recurrent`` family exports.

:meth:`robometa.methods.recurrent.RecurrentLearner.write_bundle` calls :func:`write_bundle`
and its ``check_bundle`` calls :func:`check_parity`; the generic writer
(:func:`robometa.bundle.export_bundle`) owns the directory, the shared manifest sections, the
files table, fsync and verification. A recurrent bundle holds

* ``policy.onnx``: ``obs`` + ``hidden`` + ``param:<name>`` (body and Q head) -> ``q_values``,
  ``action``;
* ``memory.onnx``: ``param:memory.*`` + ``hidden`` + one transition per row (``obs``,
  ``action``, ``reward``, ``next_obs``, ``terminated``; any batch >= 1) -> ``new:hidden``,
  traced from :func:`robometa.methods.recurrent.advance`: the state is an explicit input and
  output, so the device carries it between calls;
* ``params.npz``: every network parameter;

and adds the manifest sections ``normalization``, ``network``, ``recurrent`` and
``parameters``. The layout and names are the reader's, :mod:`robometa.deploy.recurrent`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robometa.adaptation import Batch
from robometa.bundle import shared_manifest
from robometa.bundle_parts import (
    conditioned_param_names,
    export_conditioned_policy_graph,
    finish_graphs,
    network_of,
    normalization_section,
    save_params,
    synthetic_transitions,
)
from robometa.deploy.bundle import PARAM_PREFIX, POLICY_GRAPH
from robometa.deploy.recurrent import HIDDEN, KIND, MEMORY_GRAPH, MEMORY_INPUTS, NEW_HIDDEN
from robometa.export import _EXAMPLE_BATCH, _example_batch, _export
from robometa.methods.recurrent import (
    RecurrentQNetwork,
    advance,
    memory_params,
    recurrent_q,
)
from robometa.networks import Params
from robometa.policy import Policy

#: tolerances of the parity check run after every export, at every step of the rollout
Q_TOLERANCE = 1e-5
HIDDEN_TOLERANCE = 1e-5
#: steps of the parity check's rollout of states
PARITY_STEPS = 200

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa recurrent policy: obs, GRU state -> Q-values, greedy action",
    MEMORY_GRAPH: "robometa recurrent memory: GRU state, transition -> next GRU state",
}


def export_policy_graph(net: RecurrentQNetwork, params: Params, path: Path) -> Path:
    return export_conditioned_policy_graph(recurrent_q, net, params, HIDDEN, net.hidden_size, path)


def export_memory_graph(net: RecurrentQNetwork, params: Params, path: Path) -> Path:
    names = list(memory_params(params))

    def memory(*args: Tensor) -> tuple[Tensor]:
        p = dict(zip(names, args[: len(names)], strict=True))
        h, obs, action, reward, next_obs, terminated = args[len(names) :]
        return (advance(net, p, h, Batch(obs, action, reward, next_obs, terminated)),)

    example = _example_batch(net, _EXAMPLE_BATCH)
    h = torch.zeros(_EXAMPLE_BATCH, net.hidden_size)
    args = (*(params[k].detach().float() for k in names), h, *example)
    return _export(
        memory,
        args,
        [False] * len(names) + [True] * (1 + len(MEMORY_INPUTS)),
        [PARAM_PREFIX + k for k in names] + [HIDDEN, *MEMORY_INPUTS],
        [NEW_HIDDEN],
        path,
    )


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a recurrent bundle (graphs, arrays, ``manifest.json``) into the empty ``root``."""
    net = network_of(policy, RecurrentQNetwork, KIND, "a recurrent network")
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params)
    export_policy_graph(net, params, root / POLICY_GRAPH)
    export_memory_graph(net, params, root / MEMORY_GRAPH)
    save_params(root, params)
    extra = {"robometa.hidden_size": str(net.hidden_size)}
    graphs = {"policy": POLICY_GRAPH, "memory": MEMORY_GRAPH}
    finish_graphs(root, manifest, graphs, _DOC_STRINGS, extra, run_dir)


def build_manifest(policy: Policy, params: Params) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files``: the shared sections and the recurrent kind's."""
    manifest = shared_manifest(policy, KIND)
    net = policy.net
    spec = net.spec
    manifest |= {
        "normalization": normalization_section(net),
        "network": {
            "obs_dim": spec.obs_dim,
            "n_actions": spec.n_actions,
            "hidden": list(spec.hidden),
            "activation": spec.activation,
            "policy_inputs": conditioned_param_names(params),
            "memory_inputs": list(memory_params(params)),
        },
        KIND: {
            "hidden_size": spec.context_dim,
            "support_size": int(policy.support_size),
            "initial": "zeros",
        },
        "parameters": {k: {"shape": list(v.shape)} for k, v in params.items()},
    }
    return manifest


# --------------------------------------------------------------------------- parity


def rollout(net: RecurrentQNetwork, n: int, seed: int = 0) -> Batch:
    """``n`` synthetic transitions at the network's scales (an episode end every 37 steps)."""
    gen = torch.Generator().manual_seed(seed)
    return Batch(*synthetic_transitions(net, n, gen), (torch.arange(n) % 37 == 36).float())


def check_parity(
    policy: Policy, bundle_dir: str | Path, steps: int = PARITY_STEPS, seed: int = 0
) -> dict[str, float]:
    """The runtime against torch along a ``steps``-step rollout: at every step the state
    (``memory.onnx`` carried from its own previous output, within :data:`HIDDEN_TOLERANCE` of
    torch's) and the Q-values under it (within :data:`Q_TOLERANCE`), through
    :class:`robometa.deploy.recurrent.RecurrentAdapter`; raise ``AssertionError`` beyond
    them. Returns the largest differences."""
    from robometa.deploy.adapter import Adapter

    adapter = Adapter.load(bundle_dir)
    net, params = policy.net, policy.params
    data = rollout(net, steps, seed)
    h_torch = torch.zeros(1, net.hidden_size)
    h_ort = np.zeros((1, net.hidden_size), np.float32)
    q_err = h_err = 0.0
    with torch.no_grad():
        for t in range(steps):
            obs = data.obs[t : t + 1]
            q = recurrent_q(net, params, obs, h_torch[0]).numpy()
            adapter.restore_params({HIDDEN: h_ort[0].copy()})
            q_err = max(q_err, float(np.abs(adapter.q_values(obs.numpy()) - q).max()))
            row = Batch(*(f[t : t + 1] for f in data))
            h_torch = advance(net, params, h_torch, row)
            h_ort = adapter.memory_step(h_ort, tuple(f.numpy() for f in row))
            h_err = max(h_err, float(np.abs(h_ort - h_torch.numpy()).max()))
    if h_err > HIDDEN_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: the recurrent state differs from torch by {h_err} over a "
            f"{steps}-step rollout"
        )
    if q_err > Q_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: Q-values differ from torch by {q_err} over a {steps}-step rollout"
        )
    return {"hidden": h_err, "q_values": q_err}
