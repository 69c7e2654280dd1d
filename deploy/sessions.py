"""ONNX Runtime sessions for a bundle's graphs, and ``policy.onnx`` bound for batch-1 acting.

One ``InferenceSession`` per graph, one thread each by default (batch-1 inference gains nothing
from a thread pool, and the robot's control loop keeps its cores). Sessions load from the bytes
:meth:`Bundle.load` verified, never from the file again.

:class:`BoundPolicy` is ``act``'s hot path: the observation row is a preallocated
``(1, obs_dim)`` array bound to the graph once with an IOBinding, the outputs are bound to
preallocated arrays, and the parameters are bound as ``OrtValue``s (again only when they
change), so a call copies 4 bytes per observation entry and runs the session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from robometa.deploy.bundle import (
    ACTION_OUTPUT,
    OBS_INPUT,
    PARAM_PREFIX,
    Q_OUTPUT,
    Bundle,
    BundleError,
)

#: the most intra-op threads per ONNX Runtime session (``threads``).
MAX_THREADS = 256
PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options for small graphs on a robot: sequential, ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ONNX")  # no ORT format
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def open_session(
    bundle: Bundle, name: str, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession:
    """A session for the bundle's graph file ``name``; a failure is a ``BundleError``."""
    path = bundle.file(name)
    # The bytes Bundle.load verified, not the file again (it may have changed since).
    try:
        return ort.InferenceSession(bundle.graph(name), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{path}: onnxruntime cannot load the graph ({err})") from err


def param_inputs(
    inputs: Iterable[str], plain: set[str], params: Mapping[str, np.ndarray], where: Path
) -> list[str]:
    """The parameters a graph takes (its ``param:<name>`` inputs), in input order; any input
    that is neither in ``plain`` nor a parameter of ``params`` is a ``BundleError``."""
    names = []
    for name in inputs:
        if name in plain:
            continue
        key = name.removeprefix(PARAM_PREFIX)
        if not name.startswith(PARAM_PREFIX) or key not in params:
            raise BundleError(f"{where}: unexpected graph input {name!r}")
        names.append(key)
    return names


class BoundPolicy:
    """``policy.onnx`` with its observation row, outputs and parameters bound once.

    Write the observation into ``obs[0]``, call ``session.run_with_iobinding(binding)``, read
    ``action`` (and ``q``); :meth:`bind_params` rebinds the parameters after they change.
    """

    def __init__(self, session: ort.InferenceSession, obs_dim: int, n_actions: int) -> None:
        self.session = session
        self.obs = np.zeros((1, obs_dim), np.float32)
        self.q = np.zeros((1, n_actions), np.float32)
        self.action = np.zeros(1, np.int64)
        self.binding = session.io_binding()
        self._bound: dict[str, ort.OrtValue] = {}  # keeps every bound OrtValue alive
        self.bind_input(OBS_INPUT, self.obs)
        for name, array in ((Q_OUTPUT, self.q), (ACTION_OUTPUT, self.action)):
            self._bound[name] = ort.OrtValue.ortvalue_from_numpy(array)
            self.binding.bind_ortvalue_output(name, self._bound[name])

    def bind_input(self, name: str, array: np.ndarray) -> None:
        value = ort.OrtValue.ortvalue_from_numpy(array)
        self._bound[name] = value  # keep the OrtValue (and its array) alive
        self.binding.bind_ortvalue_input(name, value)

    def bind_params(self, names: Iterable[str], params: Mapping[str, np.ndarray]) -> None:
        """Bind ``params[k]`` (read-only float32 arrays) to the ``param:<k>`` inputs."""
        for k in names:
            self.bind_input(PARAM_PREFIX + k, params[k])
