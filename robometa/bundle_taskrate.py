"""The ``taskrate`` bundle kind, writer side: what :mod:`robometa.methods.taskrate` exports.

A taskrate bundle holds

* ``policy.onnx``: the gradient kind's (``obs`` + the ``param:`` inputs Q uses);
* ``adapt.onnx``: every ``param:`` (Q-network, encoder, rate layers), a transition batch,
  ``gamma`` and ``step`` -> ``new:<name>`` per adapted parameter, ``loss`` and ``rates``: the
  rate network over the batch (:func:`robometa.methods.taskrate.generated_rates`) and one
  :func:`robometa.adaptation.adapt_step` at the rates of row ``min(step, steps - 1)``;
* ``params.npz``: every network parameter (no ``lrs.npz``: the rates are generated);

and the gradient kind's manifest sections (:func:`robometa.bundle_gradient.build_manifest`)
plus ``rates`` (``base``, ``range``, ``steps``, ``layers``). The reader is
:mod:`robometa.deploy.taskrate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robometa.adaptation import Batch, InnerLoss, adapt_step
from robometa.bundle_gradient import build_manifest
from robometa.bundle_parts import finish_graphs, network_of, save_params, synthetic_transitions
from robometa.deploy.bundle import (
    ADAPT_GRAPH,
    BATCH_INPUTS,
    GAMMA_INPUT,
    LOSS_OUTPUT,
    NEW_PREFIX,
    PARAM_PREFIX,
    POLICY_GRAPH,
)
from robometa.deploy.taskrate import KIND, RATES_OUTPUT, STEP_INPUT
from robometa.export import _EXAMPLE_BATCH, _example_batch, _export, export_policy_graph
from robometa.methods.taskrate import (
    META_POLICY_PREFIXES,
    TaskRateNetwork,
    generated_rates,
    rate_layers,
    step_lrs,
)
from robometa.networks import Params
from robometa.policy import Policy

#: tolerances of the parity check run after every export
Q_TOLERANCE = 1e-5
PARAM_TOLERANCE = 1e-4
RATE_TOLERANCE = 1e-5

_DOC_STRINGS = {
    POLICY_GRAPH: "robometa policy: obs -> Q-values, greedy action",
    ADAPT_GRAPH: "robometa taskrate step: params, transitions, gamma, step -> new params, loss, "
    "generated rates",
}


def q_params(params: Params) -> Params:
    """The Q-network's parameters (the meta-policy's left out)."""
    return {k: v for k, v in params.items() if not k.startswith(META_POLICY_PREFIXES)}


def export_adapt_graph(
    net: TaskRateNetwork, params: Params, base: Params, inner: InnerLoss, path: Path
) -> Path:
    """One generated-rate step as a graph (module docstring)."""
    names, adapted = list(params), list(base)
    base = {k: v.detach().float() for k, v in base.items()}
    n_p = len(names)

    def step(*args: Tensor) -> tuple[Tensor, ...]:
        p = dict(zip(names, args[:n_p], strict=True))
        obs, action, reward, next_obs, terminated, gamma, index = args[n_p:]
        batch = Batch(obs, action, reward, next_obs, terminated)
        rates = generated_rates(net, p, base, batch)
        row = rates.index_select(0, index.clamp(0, net.spec.rate_steps - 1).reshape(1))
        layers = rate_layers(names)
        lrs = {k: row[0, layers.index(k.rsplit(".", 1)[0])] for k in adapted}
        new, loss = adapt_step(net, p, lrs, batch, inner, gamma=gamma)
        return (*(new[k] for k in adapted), loss, rates)

    args = (
        *(params[k].detach().float() for k in names),
        *_example_batch(net, _EXAMPLE_BATCH),
        torch.tensor(inner.gamma, dtype=torch.float32),
        torch.tensor(1, dtype=torch.int64),
    )
    return _export(
        step,
        args,
        [False] * n_p + [True] * len(BATCH_INPUTS) + [False, False],
        [PARAM_PREFIX + k for k in names] + list(BATCH_INPUTS) + [GAMMA_INPUT, STEP_INPUT],
        [NEW_PREFIX + k for k in adapted] + [LOSS_OUTPUT, RATES_OUTPUT],
        path,
    )


def write_bundle(policy: Policy, root: Path, run_dir: Path | None) -> None:
    """Write a taskrate bundle (graphs, ``params.npz``, ``manifest.json``) into ``root``."""
    net = network_of(policy, TaskRateNetwork, KIND, "a taskrate network")
    params = {k: v.detach().float() for k, v in policy.params.items()}
    manifest = build_taskrate_manifest(policy, params)
    export_policy_graph(net, q_params(params), root / POLICY_GRAPH)
    export_adapt_graph(net, params, policy.lrs, policy.inner, root / ADAPT_GRAPH)
    save_params(root, params)
    extra = {
        "robometa.inner_kind": policy.inner.kind,
        "robometa.adapted": ",".join(policy.lrs),
        "robometa.rate_layers": ",".join(manifest[RATES_OUTPUT]["layers"]),
    }
    graphs = {"policy": POLICY_GRAPH, "adapt": ADAPT_GRAPH}
    finish_graphs(root, manifest, graphs, _DOC_STRINGS, extra, run_dir)


def build_taskrate_manifest(policy: Policy, params: Params) -> dict[str, Any]:
    """The gradient kind's manifest (kind ``taskrate``), ``inner.lr`` saying the rates are
    generated, the network's rate settings, and the section ``rates``."""
    lrs = {k: v.detach().float() for k, v in policy.lrs.items()}
    manifest = build_manifest(policy, params, lrs, policy.inner, False)
    spec = policy.net.spec
    base = float(next(iter(lrs.values())))
    manifest["kind"] = KIND
    manifest["network"] |= {
        "summary_dim": spec.summary_dim,
        "rate_steps": spec.rate_steps,
        "rate_range": spec.rate_range,
    }
    manifest["inner"]["lr"] = {k: {"generated": True, "base": float(v)} for k, v in lrs.items()}
    manifest[RATES_OUTPUT] = {
        "base": base,
        "range": float(spec.rate_range),
        "steps": int(spec.rate_steps),
        "layers": rate_layers(list(params)),
    }
    return manifest


# --------------------------------------------------------------------------- parity


def parity_batch(net: TaskRateNetwork, n: int, seed: int) -> Batch:
    """A transition batch around the network's normalization (for parity checks)."""
    gen = torch.Generator().manual_seed(seed)
    return Batch(*synthetic_transitions(net, n, gen), (torch.rand(n, generator=gen) < 0.2).float())


def check_parity(policy: Policy, bundle_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """The runtime against torch, through :class:`robometa.deploy.taskrate.TaskRateAdapter`:
    Q-values (within :data:`Q_TOLERANCE`), the generated rates (:data:`RATE_TOLERANCE`) and
    every step of a call (:data:`PARAM_TOLERANCE`, one step per trained rate row and one
    past them); raise ``AssertionError`` beyond them. Returns the largest differences."""
    from robometa.deploy.adapter import Adapter

    adapter = Adapter.load(bundle_dir)
    net, params = policy.net, policy.params
    batch = parity_batch(net, 11, seed)
    with torch.no_grad():
        q_torch = torch.func.functional_call(net, params, (batch.obs, False))[0]
        rates_torch = generated_rates(net, params, policy.lrs, batch)
    q_err = float(np.abs(adapter.q_values(batch.obs.numpy()) - q_torch.numpy()).max())
    if q_err > Q_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: Q-values differ from torch by {q_err}")
    data = tuple(t.numpy() for t in batch)
    torch_params, ort_params = dict(params), dict(adapter.meta_params)
    p_err = r_err = loss_err = 0.0
    for i in range(net.spec.rate_steps + 1):
        with torch.no_grad():
            lrs = step_lrs(net, rates_torch, list(policy.lrs), i, torch_params)
            torch_params, loss = adapt_step(net, torch_params, lrs, batch, policy.inner)
        new, ort_loss = adapter.step(ort_params, data, index=i)
        r_err = max(r_err, float(np.abs(adapter.rates - rates_torch.numpy()).max()))
        p_err = max(p_err, max(float(np.abs(new[k] - torch_params[k].numpy()).max()) for k in new))
        loss_err = max(loss_err, abs(ort_loss - float(loss)))
        ort_params.update(new)
        ort_params = {k: torch_params[k].numpy() for k in ort_params}  # step from the same point
    if r_err > RATE_TOLERANCE:
        raise AssertionError(f"{bundle_dir}: generated rates differ from torch by {r_err}")
    if p_err > PARAM_TOLERANCE or loss_err > PARAM_TOLERANCE:
        raise AssertionError(
            f"{bundle_dir}: adapted parameters differ from torch by {p_err}, loss by {loss_err}"
        )
    return {"q_values": q_err, "rates": r_err, "adapted_params": p_err, "loss": loss_err}
