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
from robometa.bundle import finish_bundle, graph_entry, shared_manifest, stamp_graph
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    OBS_INPUT,
    PARAM_PREFIX,
    PARAMS_FILE,
    POLICY_GRAPH,
    Q_OUTPUT,
)
from robometa.deploy.context import CONTEXT, ENCODER_GRAPH, ENCODER_INPUTS, KIND
from robometa.export import _EXAMPLE_BATCH, _example_batch, _example_obs, _export
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


def policy_param_names(params: Params) -> list[str]:
    """What Q depends on: the body and the Q head (not the encoder, not the model head)."""
    return [k for k in params if k.startswith(("body.", "q_head."))]


def export_policy_graph(net: ContextQNetwork, params: Params, path: Path) -> Path:
    names = policy_param_names(params)
    fixed = {k: v.detach() for k, v in params.items()}

    def policy(obs: Tensor, z: Tensor, *values: Tensor) -> tuple[Tensor, Tensor]:
        q = context_q(net, {**fixed, **dict(zip(names, values, strict=True))}, obs, z)
        return q, q.argmax(dim=1)

    z = torch.zeros(net.spec.context_dim)
    args = (_example_obs(net, _EXAMPLE_BATCH), z, *(fixed[k].float() for k in names))
    return _export(
        policy,
        args,
        [True, False] + [False] * len(names),
        [OBS_INPUT, CONTEXT] + [PARAM_PREFIX + k for k in names],
        [Q_OUTPUT, ACTION_OUTPUT],
        path,
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
    net = policy.net
    if not isinstance(net, ContextQNetwork):
        raise ValueError(
            f"a {KIND!r} bundle needs a context network, the policy of {policy.algorithm!r} has "
            f"a {type(net).__name__}"
        )
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_manifest(policy, params)
    export_policy_graph(net, params, root / POLICY_GRAPH)
    export_encoder_graph(net, params, root / ENCODER_GRAPH)
    np.savez(root / PARAMS_FILE, **{k: v.numpy() for k, v in params.items()})
    extra = {"robometa.context_dim": str(net.spec.context_dim)}
    for name in (POLICY_GRAPH, ENCODER_GRAPH):
        stamp_graph(root / name, manifest, _DOC_STRINGS[name], extra)
    manifest["graphs"] = {
        "policy": graph_entry(root / POLICY_GRAPH),
        "encoder": graph_entry(root / ENCODER_GRAPH),
    }
    finish_bundle(root, manifest, run_dir)


def build_manifest(policy: Policy, params: Params) -> dict[str, Any]:
    """Everything but ``graphs`` and ``files``: the shared sections and the context kind's."""
    manifest = shared_manifest(policy, KIND)
    spec, net = policy.net.spec, policy.net
    manifest |= {
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
    obs = net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    batch = Batch(
        obs,
        torch.randint(0, net.spec.n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + net.delta_std * torch.randn(n, net.spec.obs_dim, generator=gen),
        torch.zeros(n),
    )
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
