"""The ``cavia-encoder`` bundle kind, writer side: what :mod:`robometa.methods.cavia_encoder`
exports.

The gradient kind's bundle of CAVIA (``policy.onnx``, ``adapt.onnx`` adapting ``context``,
``params.npz``, ``lrs.npz``: :mod:`robometa.bundle_gradient`'s graphs and manifest, kind
``cavia-encoder``) plus ``encoder.onnx`` (the context family's encoder graph,
:func:`robometa.bundle_context.export_encoder_graph`) and the manifest section ``encoder``.
The reader is :mod:`robometa.deploy.cavia_encoder`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robometa.bundle_context import export_encoder_graph
from robometa.bundle_gradient import build_manifest
from robometa.bundle_parts import finish_graphs, save_params
from robometa.bundle_taskrate import parity_batch
from robometa.deploy.bundle import ADAPT_GRAPH, LRS_FILE, POLICY_GRAPH
from robometa.deploy.cavia_encoder import CONTEXT, ENCODER_GRAPH, KIND
from robometa.export import export_adapt_graph, export_policy_graph
from robometa.methods.cavia_encoder import CaviaEncoderNetwork, initial_context
from robometa.methods.context import encode, encoder_params
from robometa.networks import Params
from robometa.policy import Policy

#: tolerances of the parity check run after every export
Q_TOLERANCE = 1e-5
CONTEXT_TOLERANCE = 1e-5
PARAM_TOLERANCE = 1e-4

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa policy: obs -> Q-values, greedy action",
    ADAPT_GRAPH: "robometa adaptation step: params, lrs, transitions, gamma -> new params, loss",
    ENCODER_GRAPH: "robometa cavia-encoder: transitions -> initial context (mean embedding)",
}


def network_params(params: Params) -> Params:
    """The Q-network's parameters (the encoder's left out)."""
    encoder = encoder_params(params)
    return {k: v for k, v in params.items() if k not in encoder}


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a cavia-encoder bundle into the empty ``root``."""
    net = policy.net
    if not isinstance(net, CaviaEncoderNetwork) or list(policy.lrs) != [CONTEXT]:
        raise ValueError(
            f"a {KIND!r} bundle needs a cavia-encoder network adapting only {CONTEXT!r}; the "
            f"policy of {policy.algorithm!r} has a {type(net).__name__} adapting "
            f"{list(policy.lrs)}"
        )
    params = {k: v.detach().float() for k, v in policy.params.items()}
    lrs = {k: v.detach().float() for k, v in policy.lrs.items()}
    manifest = build_manifest(policy, params, lrs, policy.inner, False)
    manifest["kind"] = KIND
    manifest["network"]["encoder_inputs"] = list(encoder_params(params))
    manifest["encoder"] = {"dim": net.spec.context_dim, "inputs": list(encoder_params(params))}
    q = network_params(params)
    export_policy_graph(net, q, root / POLICY_GRAPH)
    export_adapt_graph(net, q, lrs, policy.inner, root / ADAPT_GRAPH)
    export_encoder_graph(net, params, root / ENCODER_GRAPH)  # type: ignore[arg-type]
    save_params(root, params)
    np.savez(root / LRS_FILE, **{k: v.numpy().astype(np.float32) for k, v in lrs.items()})
    extra = {"robometa.inner_kind": policy.inner.kind, "robometa.adapted": CONTEXT}
    graphs = {"policy": POLICY_GRAPH, "adapt": ADAPT_GRAPH, "encoder": ENCODER_GRAPH}
    finish_graphs(root, manifest, graphs, _DOC_STRINGS, extra, run_dir)


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """The runtime against torch, through
    :class:`robometa.deploy.cavia_encoder.CaviaEncoderAdapter`: the encoder's context (within
    :data:`CONTEXT_TOLERANCE`), Q-values under the meta-parameters (:data:`Q_TOLERANCE`) and
    the policy's steps from the encoded context (:data:`PARAM_TOLERANCE`); raise
    ``AssertionError`` beyond them. Returns the largest differences."""
    from robometa.adaptation import adapt_step
    from robometa.deploy.adapter import Adapter

    adapter = Adapter.load(bundle_dir)
    net, params = policy.net, policy.params
    batch = parity_batch(net, 13, seed)
    with torch.no_grad():
        z = encode(net, params, batch)
        q_torch = torch.func.functional_call(net, params, (batch.obs, False))[0]
    data = tuple(t.numpy() for t in batch)
    z_err = float(np.abs(adapter.encode(data) - z.numpy()).max())
    if z_err > CONTEXT_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: the encoder's context differs from torch by {z_err}")
    q_err = float(np.abs(adapter.q_values(batch.obs.numpy()) - q_torch.numpy()).max())
    if q_err > Q_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: Q-values differ from torch by {q_err}")
    with torch.no_grad():
        torch_params = initial_context(net, params, batch)
    ort_params = {**adapter.meta_params, CONTEXT: z.numpy()}
    p_err = 0.0
    for _ in range(max(1, policy.adapt_steps)):
        with torch.no_grad():
            torch_params, _ = adapt_step(net, torch_params, policy.lrs, batch, policy.inner)
        new, _ = adapter.step(ort_params, data)
        p_err = max(p_err, float(np.abs(new[CONTEXT] - torch_params[CONTEXT].numpy()).max()))
        ort_params[CONTEXT] = torch_params[CONTEXT].numpy()
    if p_err > PARAM_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: the refined context differs from torch by {p_err}")
    return {"context": z_err, "q_values": q_err, "adapted_params": p_err}
