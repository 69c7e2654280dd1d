"""The bundle format, reader side: what a bundle directory holds and how it is verified.

A bundle is a directory written by ``robometa export`` (the writer is ``robometa.bundle``; this
module is the single home of the format's names and version, and the writer imports them):

| file | content |
|---|---|
| ``policy.onnx`` | ``obs`` ``(B, obs_dim)`` float32 and ``param:<name>`` -> ``q_values`` ``(B, n_actions)`` float32, ``action`` ``(B,)`` int64 (greedy, first maximum on ties). Observation normalization is inside the graph. Only the parameters Q depends on are inputs (not the dynamics-model head). |
| ``adapt.onnx`` | ``param:<name>`` (every parameter), ``lr:<name>`` (adapted parameters only; a scalar, or the parameter's shape for Meta-SGD), ``obs``, ``action`` int64, ``reward``, ``next_obs``, ``terminated`` float32 (any batch size >= 1), ``gamma`` scalar -> ``new:<name>`` for every adapted parameter and ``loss`` (the inner loss *before* the step). |
| ``params.npz`` | the meta-parameters, float32, keyed by parameter name |
| ``lrs.npz`` | the inner learning rates, float32, keyed by adapted parameter name |
| ``manifest.json`` | everything else (see :data:`FORMAT_VERSION` and ``robometa.bundle``), with a sha256 for every other file |
| ``config.yaml`` | optional: the run's config file, copied verbatim |

This module needs only numpy and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: version of the bundle layout; readers refuse any other.
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
POLICY_GRAPH = "policy.onnx"
ADAPT_GRAPH = "adapt.onnx"
PARAMS_FILE = "params.npz"
LRS_FILE = "lrs.npz"
CONFIG_FILE = "config.yaml"
REQUIRED_FILES: tuple[str, ...] = (POLICY_GRAPH, ADAPT_GRAPH, PARAMS_FILE, LRS_FILE)

# Graph input and output names.
PARAM_PREFIX = "param:"
LR_PREFIX = "lr:"
NEW_PREFIX = "new:"
OBS_INPUT = "obs"
BATCH_INPUTS: tuple[str, ...] = ("obs", "action", "reward", "next_obs", "terminated")
GAMMA_INPUT = "gamma"
Q_OUTPUT = "q_values"
ACTION_OUTPUT = "action"
LOSS_OUTPUT = "loss"

_REQUIRED_KEYS: tuple[str, ...] = (
    "format_version",
    "env_id",
    "algorithm",
    "privileged",
    "observation",
    "action",
    "discount",
    "inner",
    "parameters",
    "files",
)


class BundleError(ValueError):
    """A bundle is missing, corrupted or of an unsupported format (the message names the file)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _bounds(values: list[Any], unbounded: float, what: str, where: Path) -> np.ndarray:
    """JSON bounds (``null`` = unbounded) as float32, with ``unbounded`` for ``null``."""
    try:
        return np.array([unbounded if v is None else float(v) for v in values], np.float32)
    except (TypeError, ValueError):
        raise BundleError(f"{where}: {what} must be a list of numbers or null") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(manifest: Mapping[str, Any], dotted: str, where: Path) -> Any:
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise BundleError(f"{where}: missing key {dotted!r}")
        node = node[part]
    return node


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise BundleError(f"{path}: not a readable .npz file ({err})") from None


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, meta-parameters and learning rates.

    ``params`` are the meta-parameters (every network parameter), ``lrs`` the inner learning
    rates of the adapted parameters (their names are ``adapted``).
    """

    path: Path
    manifest: dict[str, Any]
    params: dict[str, np.ndarray]
    lrs: dict[str, np.ndarray]

    # ------------------------------------------------------------------ views of the manifest

    @property
    def obs_dim(self) -> int:
        return int(self.manifest["observation"]["shape"][0])

    @property
    def n_actions(self) -> int:
        return int(self.manifest["action"]["n"])

    @property
    def obs_low(self) -> np.ndarray:
        low = self.manifest["observation"]["low"]
        return _bounds(low, -np.inf, "observation.low", self.path / MANIFEST_FILE)

    @property
    def obs_high(self) -> np.ndarray:
        high = self.manifest["observation"]["high"]
        return _bounds(high, np.inf, "observation.high", self.path / MANIFEST_FILE)

    @property
    def discount(self) -> float:
        return float(self.manifest["discount"])

    @property
    def adapted(self) -> tuple[str, ...]:
        return tuple(self.manifest["inner"]["adapted"])

    @property
    def env_id(self) -> str:
        return str(self.manifest["env_id"])

    @property
    def identity(self) -> str:
        """A digest of every file's hash: two bundles with equal identity are identical."""
        files = json.dumps(self.manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(files).hexdigest()

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read and verify a bundle directory; raise :class:`BundleError` naming the problem."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle directory {root} does not exist")
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: missing (is {root} a robometa bundle?)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{manifest_path}: not valid JSON ({err})") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{manifest_path}: expected a JSON object at the top")
        version = manifest.get("format_version")
        if not _is_int(version) or version != FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path}: format_version {version!r} is not supported "
                f"(this runtime reads format {FORMAT_VERSION}); re-export the bundle with a "
                "matching robometa"
            )
        for key in _REQUIRED_KEYS:
            _get(manifest, key, manifest_path)
        _verify_files(root, manifest)
        params = _load_arrays(root / PARAMS_FILE)
        lrs = _load_arrays(root / LRS_FILE)
        _check_contents(root, manifest, params, lrs)
        return cls(root, manifest, params, lrs)


def _verify_files(root: Path, manifest: Mapping[str, Any]) -> None:
    where = root / MANIFEST_FILE
    files = manifest["files"]
    if not isinstance(files, Mapping):
        raise BundleError(f"{where}: 'files' must map file name -> {{sha256, bytes}}")
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{where}: required file {name!r} is not listed in 'files'")
    for name, entry in files.items():
        file = root / name
        if Path(name).name != name:
            raise BundleError(f"{where}: file entry {name!r} must be a plain file name")
        if not file.is_file():
            raise BundleError(f"{file}: missing (listed in {MANIFEST_FILE})")
        expected = entry.get("sha256") if isinstance(entry, Mapping) else None
        if not isinstance(expected, str):
            raise BundleError(f"{where}: files.{name} has no sha256")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"{file}: sha256 mismatch (file {actual[:12]}..., manifest {expected[:12]}...); "
                "the file is corrupted or was modified after export"
            )


def _check_contents(
    root: Path,
    manifest: Mapping[str, Any],
    params: dict[str, np.ndarray],
    lrs: dict[str, np.ndarray],
) -> None:
    where = root / MANIFEST_FILE
    declared = _get(manifest, "parameters", where)
    if not isinstance(declared, Mapping):
        raise BundleError(f"{where}: 'parameters' must map name -> {{shape, adapted}}")
    if set(declared) != set(params):
        raise BundleError(
            f"{root / PARAMS_FILE}: parameters {sorted(params)} do not match the manifest's "
            f"{sorted(declared)}"
        )
    for name, value in params.items():
        entry = declared[name]
        if not isinstance(entry, Mapping) or not isinstance(entry.get("shape"), list):
            raise BundleError(f"{where}: parameters[{name!r}] has no 'shape' list")
        shape = tuple(entry["shape"])
        if value.dtype != np.float32 or value.shape != shape:
            raise BundleError(
                f"{root / PARAMS_FILE}: {name} is {value.dtype}{list(value.shape)}, "
                f"expected float32{list(shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise BundleError(f"{root / PARAMS_FILE}: {name} contains NaN or inf")
    adapted = _get(manifest, "inner.adapted", where)
    names_ok = isinstance(adapted, list) and all(isinstance(a, str) for a in adapted)
    if not names_ok or len(set(adapted)) != len(adapted) or set(adapted) != set(lrs):
        raise BundleError(
            f"{root / LRS_FILE}: learning rates for {sorted(lrs)} do not match the adapted "
            f"parameters {adapted!r} in the manifest"
        )
    for name, lr in lrs.items():
        if name not in params:
            raise BundleError(f"{root / LRS_FILE}: {name!r} is not a parameter")
        if lr.dtype != np.float32 or lr.shape not in ((), params[name].shape):
            raise BundleError(
                f"{root / LRS_FILE}: {name} is {lr.dtype}{list(lr.shape)}, expected a float32 "
                f"scalar or float32{list(params[name].shape)}"
            )
        if not np.all(np.isfinite(lr)):
            raise BundleError(f"{root / LRS_FILE}: {name} contains NaN or inf")
    shape = _get(manifest, "observation.shape", where)
    if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0]) and shape[0] >= 1):
        raise BundleError(f"{where}: observation.shape must be [obs_dim], got {shape!r}")
    for key in ("low", "high", "names"):
        values = _get(manifest, f"observation.{key}", where)
        if not isinstance(values, list) or len(values) != int(shape[0]):
            raise BundleError(f"{where}: observation.{key} must be a list of {shape[0]} entries")
    for key in ("env_id", "algorithm"):
        if not isinstance(manifest[key], str) or not manifest[key]:
            raise BundleError(f"{where}: {key} must be a non-empty string, got {manifest[key]!r}")
    if not isinstance(manifest["privileged"], bool):
        raise BundleError(f"{where}: privileged must be true or false")
    for key in ("low", "high"):
        _bounds(manifest["observation"][key], 0.0, f"observation.{key}", where)
    n = _get(manifest, "action.n", where)
    if not _is_int(n) or n < 1:
        raise BundleError(f"{where}: action.n must be a positive integer, got {n!r}")
    names = _get(manifest, "action.names", where)
    if not isinstance(names, list) or len(names) != n:
        raise BundleError(f"{where}: action.names must be a list of {n} names")
    for key in ("inner.steps", "inner.support_size"):
        value = _get(manifest, key, where)
        if not _is_int(value) or value < 0:
            raise BundleError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    gamma = _get(manifest, "discount", where)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
        raise BundleError(f"{where}: discount must be a number in [0, 1], got {gamma!r}")
