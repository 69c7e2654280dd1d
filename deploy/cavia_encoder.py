"""The ``cavia-encoder`` bundle kind: ``encoder.onnx`` guesses CAVIA's context from the buffer,
then guarded gradient steps of ``adapt.onnx`` refine it.

The ``cavia-encoder`` method (:mod:`robometa.methods.cavia_encoder`) exports this kind. Its
bundles hold the gradient kind's files (``policy.onnx``, CAVIA's ``adapt.onnx`` adapting the
``context`` parameter, ``params.npz``, ``lrs.npz``) and

| graph | inputs -> outputs |
|---|---|
| ``encoder`` (``encoder.onnx``) | the encoder's ``param:`` inputs and a transition batch of any size >= 1 (``obs``, ``action`` int64, ``reward``, ``next_obs``) -> ``context`` (context_dim,): the mean of the transitions' embeddings |

plus the manifest section ``encoder`` (``dim``: the context's size, ``inputs``: the encoder's
parameters).

:class:`CaviaEncoderAdapter` is the gradient kind's runtime: an ``adapt`` from the
meta-parameters (the default, as in meta-training) starts at the meta-parameters with the
context the encoder infers from the training share of the buffer (the guard's held-out
transitions stay unseen), then takes the steps; ``adapt(0)`` keeps the encoder's context
alone. The guard is the gradient kind's: a held-out loss that gets worse, or a context that
is not finite, rolls back to the current parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from robometa.deploy.bundle import (
    PARAM_PREFIX,
    Bundle,
    BundleLayout,
    GraphContext,
    GraphIO,
    GraphSpec,
    check_int,
    check_object,
    fail,
    manifest_key,
)
from robometa.deploy.context import (
    CONTEXT,
    ENCODER_GRAPH,
    ENCODER_INPUTS,
    MAX_CONTEXT_DIM,
    encoder_io,
)
from robometa.deploy.gradient import GRADIENT_LAYOUT, GradientAdapter, check_gradient_manifest
from robometa.deploy.sessions import PROVIDERS, open_session, param_inputs, session_options
from robometa.deploy.transitions import Transitions

#: the kind's name (the manifest's ``kind``)
KIND = "cavia-encoder"
# the encoder graph (``ENCODER_GRAPH``, its ``ENCODER_INPUTS``, its output ``CONTEXT``, also
# the adapted parameter) is the context kind's


def _encoder_io(graph: GraphContext) -> GraphIO:
    return encoder_io(graph, int(graph.manifest["encoder"]["dim"]))


def check_cavia_encoder_manifest(manifest: Mapping[str, Any], where: Path, obs_dim: int) -> None:
    """The gradient kind's sections, ``inner.adapted`` exactly ``["context"]``, and
    ``encoder.dim`` in ``[1, MAX_CONTEXT_DIM]``, the context parameter's size."""
    check_gradient_manifest(manifest, where, obs_dim)
    adapted = manifest["inner"]["adapted"]
    if adapted != [CONTEXT]:
        fail(where, "inner.adapted", adapted, f"[{CONTEXT!r}] (a {KIND} bundle adapts the context)")
    section = check_object(where, "encoder", manifest["encoder"])
    dim = manifest_key(section, "dim", where, "encoder.")
    check_int(where, "encoder.dim", dim, 1, MAX_CONTEXT_DIM)
    shape = manifest["parameters"][CONTEXT]["shape"]
    if shape != [dim]:
        fail(where, "encoder.dim", dim, f"the context parameter's size ({shape})")


#: a cavia-encoder bundle: the gradient kind's files, ``encoder.onnx``, and the section
#: ``encoder``
CAVIA_ENCODER_LAYOUT = BundleLayout(
    graphs={**GRADIENT_LAYOUT.graphs, "encoder": GraphSpec(ENCODER_GRAPH, _encoder_io)},
    arrays=GRADIENT_LAYOUT.arrays,
    sections=(*GRADIENT_LAYOUT.sections, "encoder"),
    check_manifest=check_cavia_encoder_manifest,
)


class CaviaEncoderAdapter(GradientAdapter):
    """The gradient kind's runtime (same arguments, guard and state files) whose adaptation
    from the meta-parameters starts at the encoder's context of the buffer.

    ``encoded``: the context the encoder gave at the last ``adapt`` (None before any).
    """

    layout = CAVIA_ENCODER_LAYOUT

    def __init__(self, bundle: Bundle, **kwargs: Any) -> None:
        super().__init__(bundle, **kwargs)
        self.encoded: np.ndarray | None = None
        options = session_options(kwargs.get("threads", 1))
        self._encoder = open_session(bundle, ENCODER_GRAPH, options, PROVIDERS)
        self._encoder_params = param_inputs(
            [i.name for i in self._encoder.get_inputs()],
            set(ENCODER_INPUTS),
            self._meta,
            bundle.file(ENCODER_GRAPH),
        )

    @classmethod
    def describe(cls, bundle: Bundle) -> list[tuple[str, str]]:
        """The gradient kind's rows and where the context starts."""
        start = (
            f"the {bundle.manifest['encoder']['dim']}-d context {ENCODER_GRAPH} infers from "
            "the buffer, then refined"
        )
        return [*super().describe(bundle), ("starts at", start)]

    def encode(self, data: Transitions) -> np.ndarray:
        """The encoder's context of a transition batch (at least one row)."""
        feeds: dict[str, Any] = {PARAM_PREFIX + k: self._meta[k] for k in self._encoder_params}
        feeds.update(zip(ENCODER_INPUTS, data[:4], strict=True))
        return self._encoder.run([CONTEXT], feeds)[0]

    def _start(
        self, from_meta: bool, before: dict[str, np.ndarray], train: Transitions
    ) -> dict[str, np.ndarray]:
        """From the meta-parameters: with the encoder's context of ``train``."""
        if not from_meta:
            return dict(before)
        self.encoded = self.encode(train)
        return {**self._meta, CONTEXT: self.encoded}
