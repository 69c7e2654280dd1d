"""The ``context`` bundle kind: ``adapt`` infers a context vector with ``encoder.onnx``.

The ``context`` method family (:mod:`robometa.methods.context`, PEARL/MQL-style) exports this
kind. Its bundles hold :data:`CONTEXT_LAYOUT`:

| graph | inputs -> outputs |
|---|---|
| ``policy`` (``policy.onnx``) | ``obs`` (B, obs_dim), ``context`` (context_dim,) and the ``param:`` inputs Q uses -> ``q_values``, ``action`` (the first maximum) |
| ``encoder`` (``encoder.onnx``) | the encoder's ``param:`` inputs and a transition batch of any size >= 1 (``obs``, ``action`` int64, ``reward``, ``next_obs``) -> ``context`` (context_dim,): the mean of the transitions' embeddings |

and ``params.npz`` (every network parameter), plus the manifest section ``context``
(``dim``, ``support_size``: the largest support encoded in training, the buffer's default
capacity).

:class:`ContextAdapter` acts with the current context (zeros after loading and ``reset``:
the policy that collects the support, as in training) and ``adapt`` recomputes the context
from the buffered transitions, one forward pass: there is no loss to guard, so an inferred
context is kept unless it is not finite. Its ``params`` are ``{"context": z}`` (what
``save_state``, ``load_state`` and ``restore_params`` carry); the network's parameters never
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.bundle import (
    Bundle,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_int,
    check_object,
    check_parameters,
    check_support_size,
    manifest_key,
    tensor_spec,
    transition_io,
)
from robometa.deploy.conditioned import ConditionedAdapter, conditioned_layout, policy_io
from robometa.deploy.transitions import Transitions

#: the kind's name (the manifest's ``kind``)
KIND = "context"
ENCODER_GRAPH = "encoder.onnx"
#: the policy graph's context input, the encoder graph's output, and the adapter's parameter
CONTEXT = "context"
#: the encoder graph's transition inputs (no ``terminated``: the encoder does not read it)
ENCODER_INPUTS: tuple[str, ...] = ("obs", "action", "reward", "next_obs")
MAX_CONTEXT_DIM = 1024  # the config's network.context_dim range

# ---------------------------------------------------------------------- the bundle layout


def _context_dim(manifest: Mapping[str, Any]) -> int:
    return int(manifest[CONTEXT]["dim"])


def _policy_io(graph: GraphContext) -> GraphIO:
    return policy_io(graph, CONTEXT, _context_dim(graph.manifest))


def encoder_io(graph: GraphContext, dim: int) -> GraphIO:
    """``encoder.onnx``: a transition batch (:data:`ENCODER_INPUTS`) -> ``context`` (dim,)."""
    inputs, feeds = transition_io(graph.manifest["observation"]["shape"][0], ENCODER_INPUTS)
    return GraphIO(inputs, feeds, {CONTEXT: tensor_spec("float", (dim,))})


def _encoder_io(graph: GraphContext) -> GraphIO:
    return encoder_io(graph, _context_dim(graph.manifest))


def check_context_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The context kind's sections: ``parameters`` (shapes) and ``context`` (``dim`` in
    ``[1, MAX_CONTEXT_DIM]``, ``support_size`` in ``[1, MAX_SUPPORT_SIZE]`` whose transition
    buffer fits in ``MAX_BUFFER_BYTES``)."""
    check_parameters(manifest, where)
    section = check_object(where, CONTEXT, manifest[CONTEXT])
    check_int(
        where, "context.dim", manifest_key(section, "dim", where, "context."), 1, MAX_CONTEXT_DIM
    )
    support = manifest_key(section, "support_size", where, "context.")
    check_support_size(where, "context.support_size", support, obs_dim)


#: a context bundle: ``policy.onnx``, ``encoder.onnx``, ``params.npz``, and the manifest
#: sections ``context`` and ``parameters``.
CONTEXT_LAYOUT = conditioned_layout(
    CONTEXT,
    _policy_io,
    ("encoder", GraphSpec(ENCODER_GRAPH, _encoder_io)),
    check_context_manifest,
)


# ---------------------------------------------------------------------- the runtime


class ContextAdapter(ConditionedAdapter):
    """Acts with the context a forward pass of ``encoder.onnx`` infers from the buffer.

    Arguments as :class:`~robometa.deploy.conditioned.ConditionedAdapter` (``bundle`` of kind
    ``context``; ``capacity=None``: the manifest's ``context.support_size``, the largest
    support encoded in training).

    ``adapt`` recomputes the context, one forward pass of the encoder (any ``steps >= 1`` is
    that one pass; ``from_meta`` changes nothing: the context depends on the transitions
    only); ``reset`` goes back to the zero context. One adapter serves one control loop: it
    is not safe to call from several threads at once.
    """

    layout = CONTEXT_LAYOUT
    #: support is collected acting with the zero context, as in meta-training
    from_meta = True
    section = CONTEXT
    condition = CONTEXT
    graph = ENCODER_GRAPH
    graph_inputs = ENCODER_INPUTS
    kept = "context"

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """How it adapts: the context's size and the support it was trained on."""
        section = bundle.manifest[CONTEXT]
        return [
            (
                "adapts",
                f"a {section['dim']}-d context inferred by {ENCODER_GRAPH} from up to "
                f"{section['support_size']} transitions (one forward pass)",
            )
        ]

    def _read_section(self, section: Mapping[str, Any]) -> None:
        self.context_dim = int(section["dim"])

    def _initial_vector(self) -> np.ndarray:
        """The zero context: the policy that collects the support, as in training."""
        return np.zeros(self.context_dim, np.float32)

    @property
    def context(self) -> np.ndarray:
        """The current context (read-only)."""
        return self._vector

    def encode(self, data: Any) -> np.ndarray:
        """The context of a transition batch (``Transitions`` of at least one row)."""
        feeds = dict(self._graph_feeds)
        feeds.update(zip(ENCODER_INPUTS, data[:4], strict=True))
        return self._graph.run([CONTEXT], feeds)[0]

    def _rederive(self, data: Transitions) -> tuple[bool, str, int]:
        """The encoder's context of the buffer; a non-finite one is discarded."""
        n = len(data.reward)
        z = self.encode(data)
        if not np.isfinite(z).all():
            return False, "the inferred context is not finite; the previous one is kept", n
        self._set_vector(z)
        return True, f"context inferred from {n} transitions", n
