"""Pieces the bundle kinds' writers share (:mod:`robometa.bundle_gradient`,
:mod:`robometa.bundle_context`, :mod:`robometa.bundle_history`,
:mod:`robometa.bundle_recurrent`, :mod:`robometa.bundle_taskrate`,
:mod:`robometa.bundle_cavia_encoder`): the manifest's ``normalization`` section,
``params.npz``, the graphs' stamping and ``graphs`` section, and the policy graph of the
kinds whose Q-network reads a conditioning vector (a context, extrinsics, a GRU state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robometa.bundle import finish_bundle, graph_entry, stamp_graph
from robometa.deploy.bundle import ACTION_OUTPUT, OBS_INPUT, PARAM_PREFIX, PARAMS_FILE, Q_OUTPUT
from robometa.export import _EXAMPLE_BATCH, _example_obs, _export
from robometa.networks import Params
from robometa.policy import Policy


def network_of(policy: Policy, network_class: type, kind: str, what: str) -> Any:
    """``policy.net`` if it is a ``network_class``, else the ``ValueError`` naming the
    bundle ``kind``, the network it needs (``what``: "a context network") and the one the
    policy has."""
    net = policy.net
    if not isinstance(net, network_class):
        raise ValueError(
            f"a {kind!r} bundle needs {what}, the policy of {policy.algorithm!r} has a "
            f"{type(net).__name__}"
        )
    return net


def network_section(spec: Any) -> dict[str, Any]:
    """The manifest's ``network`` keys every Q-network with a conditioning vector shares
    (the kind adds its own after them)."""
    return {
        "obs_dim": spec.obs_dim,
        "n_actions": spec.n_actions,
        "hidden": list(spec.hidden),
        "context_dim": spec.context_dim,
        "activation": spec.activation,
    }


def normalization_section(net: Any) -> dict[str, list[float]]:
    """The manifest's ``normalization``: the network's observation and state-change scales."""
    return {
        "obs_mean": net.obs_mean.tolist(),
        "obs_std": net.obs_std.tolist(),
        "delta_std": net.delta_std.tolist(),
    }


def save_params(root: Path, params: Params) -> None:
    """``params.npz``: every (detached, float) network parameter."""
    np.savez(root / PARAMS_FILE, **{k: v.numpy() for k, v in params.items()})


def finish_graphs(
    root: Path,
    manifest: dict[str, Any],
    graphs: Mapping[str, str],
    doc_strings: Mapping[str, str],
    extra: dict[str, str],
    run_dir: Path | None,
) -> None:
    """Stamp each graph file of ``graphs`` (manifest key -> file name, in order) with the
    manifest's metadata, its doc string and ``extra``, record the ``graphs`` section and
    finish the bundle (:func:`robometa.bundle.finish_bundle`)."""
    for name in graphs.values():
        stamp_graph(root / name, manifest, doc_strings[name], extra)
    manifest["graphs"] = {key: graph_entry(root / name) for key, name in graphs.items()}
    finish_bundle(root, manifest, run_dir)


def synthetic_transitions(
    net: Any, n: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` parity-check transitions ``(obs, action, reward, next_obs)`` at the network's
    scales, drawn from ``gen`` in that order (the terminations are the caller's)."""
    obs = net.obs_mean + net.obs_std * torch.randn(n, net.spec.obs_dim, generator=gen)
    return (
        obs,
        torch.randint(0, net.spec.n_actions, (n,), generator=gen),
        torch.randn(n, generator=gen),
        obs + net.delta_std * torch.randn(n, net.spec.obs_dim, generator=gen),
    )


def conditioned_param_names(params: Params) -> list[str]:
    """What a conditioned Q depends on: the body and the Q head (not the conditioning's
    module, not the model head)."""
    return [k for k in params if k.startswith(("body.", "q_head."))]


def export_conditioned_policy_graph(
    q: Callable[[Any, Params, Tensor, Tensor], Tensor],
    net: Any,
    params: Params,
    condition: str,
    condition_dim: int,
    path: Path,
) -> Path:
    """``policy.onnx`` of a Q-network conditioned on a vector: ``obs`` (any batch) +
    ``condition`` (``(condition_dim,)``) + ``param:<name>`` of
    :func:`conditioned_param_names` -> ``q_values``, ``action``, traced through ``q(net,
    params, obs, condition)``."""
    names = conditioned_param_names(params)
    fixed = {k: v.detach() for k, v in params.items()}

    def policy(obs: Tensor, z: Tensor, *values: Tensor) -> tuple[Tensor, Tensor]:
        out = q(net, {**fixed, **dict(zip(names, values, strict=True))}, obs, z)
        return out, out.argmax(dim=1)

    z = torch.zeros(condition_dim)
    args = (_example_obs(net, _EXAMPLE_BATCH), z, *(fixed[k].float() for k in names))
    return _export(
        policy,
        args,
        [True, False] + [False] * len(names),
        [OBS_INPUT, condition] + [PARAM_PREFIX + k for k in names],
        [Q_OUTPUT, ACTION_OUTPUT],
        path,
    )
