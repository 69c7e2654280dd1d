"""The ``context`` bundle kind, writer side: what the ``context`` family exports.

:meth:`robometa.methods.context.ContextLearner.write_bundle` calls :func:`write_bundle` and
its ``check_bundle`` calls :func:`check_parity`; the generic writer
(:func:`robometa.bundle.export_bundle`) owns the directory, the shared manifest sections, the
files table, fsync and verification. A context bundle holds

* ``policy.onnx``: ``obs`` + ``context`` + ``param:<name>`` (body and Q head) -> ``q_values``,
  ``action``;
* ``encoder.onnx``: ``param:encoder.*`` + ``obs``, ``action``, ``reward``, ``next_obs`` (any
  batch >= 1) -> ``context``, traced from :func:`robometa.methods.context.encode`;
* ``params.npz``: every network parameter;

and adds the manifest sections ``normalization``, ``network``, ``context`` and
``parameters``. The layout and names are the reader's, :mod:`robometa.deploy.context`.
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
    network_section,
    normalization_section,
    save_params,
    synthetic_transitions,
)
from robometa.deploy.bundle import PARAM_PREFIX, POLICY_GRAPH
from robometa.deploy.context import CONTEXT, ENCODER_GRAPH, ENCODER_INPUTS, KIND
from robometa.export import _EXAMPLE_BATCH, _example_batch, _export
from robometa.methods.context import ContextQNetwork, context_q, encode, encoder_params
from robometa.networks import Params
from robometa.policy import Policy

#: tolerances of the parity check run after every export (Q-values and the context)
Q_TOLERANCE = 1e-5
CONTEXT_TOLERANCE = 1e-5

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa context policy: obs, context -> Q-values, greedy action",
    ENCODER_GRAPH: "robometa context encoder: transitions -> context (mean embedding)",
}


def export_policy_graph(net: ContextQNetwork, params: Params, path: Path) -> Path:
    return export_conditioned_policy_graph(
        context_q, net, params, CONTEXT, net.spec.context_dim, path
    )


def export_encoder_graph(net: ContextQNetwork, params: Params, path: Path) -> Path:
    names = list(encoder_params(params))

    def encoder(*args: Tensor) -> tuple[Tensor]:
        p = dict(zip(names, args[: len(names)], strict=True))
        obs, action, reward, next_obs = args[len(names) :]
        batch = Batch(obs, action, reward, next_obs, torch.zeros_like(reward))
        return (encode(net, p, batch),)

    example = _example_batch(net, _EXAMPLE_BATCH)
    args = (*(params[k].detach().float() for k in names), *example[:4])
    return _export(
        encoder,
        args,
        [False] * len(names) + [True] * len(ENCODER_INPUTS),
        [PARAM_PREFIX + k for k in names] + list(ENCODER_INPUTS),
        [CONTEXT],
        path,
    )


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a context bundle (graphs, arrays, ``manifest.json``) into the empty ``root``."""
    net = network_of(policy, ContextQNetwork, KIND, "a context network")
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params)
    export_policy_graph(net, params, root / POLICY_GRAPH)
    export_encoder_graph(net, params, root / ENCODER_GRAPH)
    save_params(root, params)
    extra = {"robometa.context_dim": str(net.spec.context_dim)}
    graphs = {"policy": POLICY_GRAPH, "encoder": ENCODER_GRAPH}
    finish_graphs(root, manifest, graphs, _DOC_STRINGS, extra, run_dir)


def build_manifest(policy: Policy, params: Params) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files``: the shared sections and the context kind's."""
    manifest = shared_manifest(policy, KIND)
    spec, net = policy.net.spec, policy.net
    manifest |= {
        "normalization": normalization_section(net),
        "network": network_section(spec)
        | {
            "policy_inputs": conditioned_param_names(params),
            "encoder_inputs": list(encoder_params(params)),
        },
        CONTEXT: {
            "dim": spec.context_dim,
            "support_size": int(policy.support_size),
            "empty": "zeros",
        },
        "parameters": {k: {"shape": list(v.shape)} for k, v in params.items()},
    }
    return manifest


# --------------------------------------------------------------------------- parity


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """The runtime against torch: the context of a transition batch (within
    :data:`CONTEXT_TOLERANCE`) and the Q-values under it and under zeros (within
    :data:`Q_TOLERANCE`), through :class:`robometa.deploy.context.ContextAdapter`; raise
    ``AssertionError`` beyond them. Returns the largest differences."""
    from robometa.deploy.adapter import Adapter

    adapter = Adapter.load(bundle_dir)
    net, params = policy.net, policy.params
    gen = torch.Generator().manual_seed(seed)
    n = 13
    batch = Batch(*synthetic_transitions(net, n, gen), torch.zeros(n))
    obs = batch.obs
    with torch.no_grad():
        z_torch = encode(net, params, batch)
        q_zero = context_q(net, params, obs, None)
        q_torch = context_q(net, params, obs, z_torch)
    z_ort = adapter.encode(tuple(t.numpy() for t in batch))
    z_err = float(np.abs(z_ort - z_torch.numpy()).max())
    if z_err > CONTEXT_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: the context differs from torch by {z_err}")
    q0_err = float(np.abs(adapter.q_values(obs.numpy()) - q_zero.numpy()).max())
    adapter.restore_params({CONTEXT: z_ort})
    q_err = float(np.abs(adapter.q_values(obs.numpy()) - q_torch.numpy()).max())
    if max(q0_err, q_err) > Q_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: Q-values differ from torch by {max(q0_err, q_err)} (zero context: "
            f"{q0_err}, inferred: {q_err})"
        )
    return {"context": z_err, "q_values": max(q0_err, q_err)}
