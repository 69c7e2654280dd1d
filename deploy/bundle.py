"""The bundle format, reader side: what a bundle directory holds and how it is verified.

A bundle is a directory written by ``robometa export`` (the writer is ``robometa.bundle``; this
module is the single home of the format's names and version, and the writer imports them).
The manifest's ``kind`` names the bundle kind (:mod:`robometa.deploy.kinds`), whose runtime
declares what its bundles hold (a :class:`BundleLayout`): its graphs (:class:`GraphSpec`), its
array files (:class:`ArraySpec`), its own manifest sections and their check. This module
checks what every kind shares (the rows marked *shared* below) and verifies whatever the
layout declares with the same rules; the rows marked *gradient* are the ``gradient`` kind's
(:data:`robometa.deploy.gradient.GRADIENT_LAYOUT`). A ``gradient`` bundle (every bundle
robometa exports; :mod:`robometa.deploy.gradient`) holds:

| file | content |
|---|---|
| ``policy.onnx`` | ``obs`` ``(B, obs_dim)`` float32 and ``param:<name>`` -> ``q_values`` ``(B, n_actions)`` float32, ``action`` ``(B,)`` int64 (greedy, first maximum on ties). Observation normalization is inside the graph. Only the parameters Q depends on are inputs (not the dynamics-model head). |
| ``adapt.onnx`` | ``param:<name>`` (every parameter), ``lr:<name>`` (adapted parameters only; a scalar, or the parameter's shape for Meta-SGD), ``obs``, ``action`` int64, ``reward``, ``next_obs``, ``terminated`` float32 (any batch size >= 1), ``gamma`` scalar -> ``new:<name>`` for every adapted parameter and ``loss`` (the inner loss *before* the step). |
| ``params.npz`` | the meta-parameters, float32, keyed by parameter name |
| ``lrs.npz`` | the inner learning rates, float32, keyed by adapted parameter name |
| ``manifest.json`` | everything else (see :data:`FORMAT_VERSION` and ``robometa.bundle``), with a sha256 for every other file |
| ``config.yaml`` | optional: the run's config file, copied verbatim |

:meth:`Bundle.load` trusts nothing in the directory. Every problem is a :class:`BundleError`
naming the file, the key, the value and what is allowed; nothing read from a bundle is ever
imported or executed. It checks (cheap checks first: no archive is decompressed and no graph
loaded before the manifest passed):

| what | rule |
|---|---|
| files | ``manifest.json`` and every file it lists are regular files inside the bundle (a symlink, directory, pipe or device is refused; the bundle directory itself may be a symlink); other entries of the directory are never opened and are not part of the bundle (``Bundle.unlisted`` names them; ``info`` prints them); only the kind's files and ``config.yaml`` can be listed; every file the kind's layout declares must be listed; each file's size and sha256 match its ``files`` entry; sizes are capped before reading (``MAX_MANIFEST_BYTES``, ``MAX_GRAPH_BYTES``, ``MAX_CONFIG_BYTES``; the ``.npz`` files by the manifest's shapes) |
| ``manifest.json`` | UTF-8 JSON object of at most ``MAX_MANIFEST_BYTES``, nested at most ``MAX_JSON_DEPTH`` deep, no duplicate keys, no NaN or infinite numbers anywhere |
| ``format_version`` (shared) | exactly :data:`FORMAT_VERSION` |
| ``kind`` (shared) | optional (missing: ``gradient``, :data:`DEFAULT_KIND`); a registered bundle kind (:func:`robometa.deploy.kinds.known_kinds`) |
| ``env_id`` (shared) | ``robometa/<Name>-v<N>`` (letters and digits, no colon: gymnasium imports the module named before a colon); the robot family itself is checked by the command that builds a simulated robot |
| ``algorithm`` (shared) | a non-empty printable string |
| ``privileged`` (shared) | ``true`` or ``false`` |
| ``observation`` (shared) | ``shape`` ``[obs_dim]`` with ``1 <= obs_dim <= MAX_OBS_DIM``; ``dtype`` ``"float32"`` when present; ``low``, ``high``: ``obs_dim`` numbers (``null``: unbounded) within float32 range, ``low <= high``; ``names``: ``obs_dim`` printable names |
| ``action`` (shared) | ``n`` in ``[1, MAX_ACTIONS]``, ``names``: ``n`` printable names |
| ``discount`` (gradient) | a number in ``[0, 1]`` |
| ``inner`` (gradient) | ``kind`` one of :data:`INNER_KINDS`; ``steps`` an integer in ``[0, MAX_INNER_STEPS]``; ``support_size`` an integer in ``[1, MAX_SUPPORT_SIZE]`` whose transition buffer (``support_size * (2 obs_dim + 3) * 4`` bytes) fits in ``MAX_BUFFER_BYTES``; ``adapted``: distinct parameter names, at least one; ``from_meta``, ``fine_tune``: booleans; ``huber_delta``, ``model_weight``: numbers >= 0 |
| ``parameters`` (gradient) | 1 to ``MAX_PARAMETERS`` names, each a ``shape`` of at most ``MAX_PARAMETER_NDIM`` positive integers and ``adapted`` (true exactly for ``inner.adapted``), ``MAX_PARAMETER_ELEMENTS`` numbers in all |
| ``graphs`` (shared) | exactly the kind's graphs (gradient: ``policy`` and ``adapt``), each with its ``file``, and ``inputs``, ``outputs`` equal to the graphs' own |
| ``producer`` (shared) | not checked (the exporting tools' versions, informational) |
| ``dynamics``, ``config`` (shared) | objects when present; ``dynamics.overrides`` an object or null, ``dynamics.family`` a printable name; ``config.adaptation.support_epsilon`` a number in ``[0, 1]`` |
| ``params.npz``, ``lrs.npz`` (gradient; a kind declares its own arrays, each checked the same way) | exactly the manifest's parameters / adapted parameters, each member's npy header (dtype float32, shape from the manifest; ``lrs``: a scalar or the parameter's shape) checked before its data is read, so an archive cannot decompress beyond what the manifest's shapes allow; finite values; learning rates >= 0 |
| graphs | ONNX IR ``ONNX_IR_VERSION`` (10) with opset ``ONNX_OPSET`` (20), in the manifest's ``graphs`` entries and in the files; no tensor keeps its data outside the graph file (ONNX external data: onnxruntime would read it from the graph's directory, or from the working directory for a graph given as bytes); onnxruntime loads each graph from the verified bytes, ONNX format only; its ``robometa.graph`` metadata, when stamped, names the file; inputs, outputs, element types and shapes match the manifest and the arrays (the inputs and outputs are the kind's :class:`GraphSpec`); a probe run on zeros returns outputs of the declared shapes, and the kind's own check of them passes (gradient: ``action`` is the first maximum of ``q_values``) |

The bundle's identity, :attr:`Bundle.digest`, is one sha256 over ``manifest.json`` and every
listed file, in a fixed order (see :func:`bundle_digest`): two bundles with equal digests hold
the same bytes. ``robometa-deploy info`` prints it, and a saved adapter state records it.

This module needs only numpy and the standard library at import; verifying the graphs imports
onnxruntime when a bundle is loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
from robometa.deploy import kinds
from robometa.deploy.kinds import DEFAULT_KIND

#: version of the bundle layout; readers refuse any other.
FORMAT_VERSION = 1
#: every graph is ONNX IR 10 with the default-domain opset 20 (onnxruntime 1.19 and later)
ONNX_OPSET = 20
ONNX_IR_VERSION = 10
MANIFEST_FILE = "manifest.json"
POLICY_GRAPH = "policy.onnx"
ADAPT_GRAPH = "adapt.onnx"
PARAMS_FILE = "params.npz"
LRS_FILE = "lrs.npz"
CONFIG_FILE = "config.yaml"
#: the files of a ``gradient`` bundle (:data:`GRADIENT_LAYOUT` of
#: :mod:`robometa.deploy.gradient`); each kind declares its own (:class:`BundleLayout`).
REQUIRED_FILES: tuple[str, ...] = (POLICY_GRAPH, ADAPT_GRAPH, PARAMS_FILE, LRS_FILE)
#: every file a gradient bundle may hold besides the manifest.
BUNDLE_FILES: tuple[str, ...] = (*REQUIRED_FILES, CONFIG_FILE)
#: the array files of a gradient bundle: the meta-parameters and the inner learning rates
#: (each kind declares its own: :attr:`BundleLayout.arrays`).
ARRAY_FILES: tuple[str, ...] = (PARAMS_FILE, LRS_FILE)

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
#: the manifest's ``graphs`` key of each graph file of a gradient bundle.
GRAPH_KEYS: dict[str, str] = {POLICY_GRAPH: "policy", ADAPT_GRAPH: "adapt"}

#: inner losses ``adapt.onnx`` can be traced from (``robometa.adaptation.InnerLoss.kind``).
INNER_KINDS: tuple[str, ...] = ("td", "model", "td+model")
#: robot family ids: ``robometa/<Name>-v<N>``.
ENV_ID_PATTERN = re.compile(r"robometa/[A-Za-z][A-Za-z0-9]*-v[0-9]+", re.ASCII)

# Documented maxima (the error names the one exceeded).
MAX_MANIFEST_BYTES = 1 << 20
MAX_CONFIG_BYTES = 1 << 20
MAX_GRAPH_BYTES = 64 << 20
MAX_JSON_DEPTH = 32
MAX_NAME_CHARS = 128
MAX_OBS_DIM = 1024
MAX_ACTIONS = 1024
MAX_INNER_STEPS = 1000  # the config's adaptation.steps range
MAX_SUPPORT_SIZE = 1_000_000  # the config's adaptation.support_size range
MAX_BUFFER_BYTES = 1 << 30  # the runtime's transition buffer for support_size transitions
MAX_PARAMETERS = 256
MAX_PARAMETER_NDIM = 4
MAX_PARAMETER_ELEMENTS = 1 << 24  # float32 numbers over all parameters (64 MiB)
_NPY_HEADER_MAX = 1024  # bytes; numpy writes ~128 for these arrays
_NPZ_MEMBER_OVERHEAD = 4096  # npy header and zip headers per member
_ONNX_MAX_DEPTH = 100  # protobuf's own default recursion limit

#: the manifest keys every kind has, checked present in this order with the kind's own
#: sections (:attr:`BundleLayout.sections`) between the two parts.
_SHARED_HEAD_KEYS: tuple[str, ...] = (
    "format_version",
    "env_id",
    "algorithm",
    "privileged",
    "observation",
    "action",
)
_SHARED_TAIL_KEYS: tuple[str, ...] = ("graphs", "files")
#: names a kind's files cannot take: the format's own.
_RESERVED_FILES = (MANIFEST_FILE, CONFIG_FILE)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class BundleError(ValueError):
    """A bundle is missing, corrupted or of an unsupported format (the message names the file)."""


# --------------------------------------------------------------------------- kinds' layouts

#: a graph input's or output's element type and dims (``None``: the batch dimension)
TensorSpec = tuple[str, tuple[int | None, ...]]


def tensor_spec(dtype: str, shape: tuple[int, ...], batch: bool = False) -> TensorSpec:
    """What a graph input or output must be: ``tensor(<dtype>)`` of ``shape``, after a batch
    dimension when ``batch``."""
    return f"tensor({dtype})", ((None,) if batch else ()) + tuple(shape)


def transition_io(
    obs_dim: int, names: tuple[str, ...] = BATCH_INPUTS
) -> tuple[dict[str, TensorSpec], dict[str, np.ndarray]]:
    """The transition-batch inputs ``names`` (of :data:`BATCH_INPUTS`: ``obs`` and
    ``next_obs`` ``(B, obs_dim)`` float, ``action`` ``(B,)`` int64, ``reward`` and
    ``terminated`` ``(B,)`` float) of a graph, and a probe batch of 2 zero rows for each."""
    shapes = {"obs": (obs_dim,), "next_obs": (obs_dim,)}
    inputs, feeds = {}, {}
    for name in names:
        shape = shapes.get(name, ())
        dtype = "int64" if name == "action" else "float"
        inputs[name] = tensor_spec(dtype, shape, batch=True)
        feeds[name] = np.zeros((2, *shape), np.int64 if dtype == "int64" else np.float32)
    return inputs, feeds


class GraphContext(NamedTuple):
    """What the reader knows when it checks one graph: the manifest, the verified arrays (by
    file, then member) and the parameters (of ``params.npz``) the graph takes as
    ``param:<name>`` inputs (``used``)."""

    where: Path
    manifest: Mapping[str, Any]
    arrays: Mapping[str, dict[str, np.ndarray]]
    used: list[str]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The arrays of ``params.npz`` (empty for a kind without it)."""
        return self.arrays.get(PARAMS_FILE, {})

    @property
    def lrs(self) -> dict[str, np.ndarray]:
        """The arrays of ``lrs.npz`` (empty for a kind without it)."""
        return self.arrays.get(LRS_FILE, {})


class GraphIO(NamedTuple):
    """A graph's inputs besides its ``param:`` ones (with a probe batch of 2 rows for each)
    and its outputs, as the manifest and arrays imply them."""

    inputs: dict[str, TensorSpec]
    feeds: dict[str, np.ndarray]
    outputs: dict[str, TensorSpec]


@dataclass(frozen=True)
class GraphSpec:
    """One graph a kind's bundles hold: its file, what it must take and give (``io``, which
    may raise a ``BundleError`` itself), and a check of its outputs on the probe batch."""

    file: str
    io: Callable[[GraphContext], GraphIO]
    check_probe: Callable[[Path, Mapping[str, np.ndarray], Mapping[str, Any]], None] | None = None


#: an array file's members by name, each with the shapes it may have (all float32)
ArrayShapes = dict[str, list[tuple[int, ...]]]


@dataclass(frozen=True)
class ArraySpec:
    """One ``.npz`` file a kind's bundles hold: its name, the members it must hold and the
    shapes each may have (``members``, read from the manifest after the kind's
    ``check_manifest`` passed; these shapes also cap the file's size and every member's
    decompressed size), and a check of each member's finite values (``check(where, name,
    value)``, raising a ``BundleError``), run after the reader's own finiteness check."""

    file: str
    members: Callable[[Mapping[str, Any]], ArrayShapes]
    check: Callable[[Path, str, np.ndarray], None] | None = None


#: ``(manifest, where, obs_dim)``: a kind's own manifest rules, raising a ``BundleError``
ManifestCheck = Callable[[Mapping[str, Any], Path, int], None]


@dataclass(frozen=True)
class BundleLayout:
    """What a bundle of one kind holds besides ``manifest.json`` (and an optional
    ``config.yaml``): its graphs by their key in the manifest's ``graphs`` table, verified in
    this order; its array files (:class:`ArraySpec`, read in this order); the top-level
    manifest sections it requires besides the shared ones (``sections``, checked present
    with them); and ``check_manifest``, its rules for those sections, run after the shared
    sections passed and before the ``graphs`` and ``files`` tables are checked.
    """

    graphs: Mapping[str, GraphSpec]
    arrays: tuple[ArraySpec, ...] = ()
    sections: tuple[str, ...] = ()
    check_manifest: ManifestCheck | None = None

    def __post_init__(self) -> None:
        names = [g.file for g in self.graphs.values()] + [a.file for a in self.arrays]
        bad = [n for n in names if not _plain_name(n) or n in _RESERVED_FILES]
        if bad or len(set(names)) != len(names):
            raise ValueError(
                f"a bundle layout's files must be distinct plain file names other than "
                f"{', '.join(_RESERVED_FILES)}, got {names}"
            )
        shared = [k for k in self.sections if k in (*_SHARED_HEAD_KEYS, *_SHARED_TAIL_KEYS)]
        if shared:
            raise ValueError(f"sections {shared} are shared by every kind, not a kind's own")

    @property
    def array_files(self) -> tuple[str, ...]:
        """The names of the array files, in order."""
        return tuple(a.file for a in self.arrays)

    @property
    def files(self) -> tuple[str, ...]:
        """Every file such a bundle must list: the graphs, then the arrays."""
        return (*(g.file for g in self.graphs.values()), *self.array_files)


def _plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_CHARS
        and name not in (".", "..")
        and Path(name).name == name
        and "\\" not in name
        and name.isprintable()
    )


def parameter_shapes(manifest: Mapping[str, Any]) -> ArrayShapes:
    """The members of ``params.npz``: every parameter of the manifest's ``parameters``
    section, of its ``shape`` (checked by :func:`check_parameters`)."""
    return {k: [tuple(v["shape"])] for k, v in manifest["parameters"].items()}


#: ``params.npz``: every parameter the manifest's ``parameters`` section declares, finite
#: float32 of its shape (a kind with this file checks that section with
#: :func:`check_parameters` in its ``check_manifest``).
PARAMS_ARRAY = ArraySpec(PARAMS_FILE, parameter_shapes)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_digest(manifest: bytes, files: Mapping[str, bytes]) -> str:
    """The bundle's identity: sha256 over ``manifest.json`` then every listed file by name.

    Each part is framed as ``name NUL length(8 bytes, big-endian) bytes`` after the prefix
    ``robometa-bundle NUL``, so no two different bundles share a byte stream.
    """
    digest = hashlib.sha256(b"robometa-bundle\0")
    for name, data in [(MANIFEST_FILE, manifest), *sorted(files.items())]:
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def _bounds(values: list[Any], unbounded: float, what: str, where: Path) -> np.ndarray:
    """JSON bounds (``null`` = unbounded) as float32, with ``unbounded`` for ``null``."""
    try:
        return np.array([unbounded if v is None else float(v) for v in values], np.float32)
    except (TypeError, ValueError):
        raise BundleError(f"{where}: {what} must be a list of numbers or null") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """``repr`` of a value from a file, shortened (a manifest may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _brief(err: BaseException) -> str:
    """An error message from a library, on one line and at most 300 characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _fail(where: Path, key: str, value: Any, expected: str) -> NoReturn:
    raise BundleError(f"{where}: {key} is {_show(value)}, expected {expected}")


def _get(node: Any, dotted: str, where: Path, prefix: str = "") -> Any:
    """``node[a][b]`` for ``dotted`` ``"a.b"``; the error names ``prefix + dotted``."""
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise BundleError(f"{where}: missing key {prefix + dotted!r}")
        node = node[part]
    return node


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, arrays, graphs and digest.

    ``arrays`` holds every array file of the kind's layout (file name -> member -> array);
    ``params`` are those of ``params.npz`` (the meta-parameters, every network parameter),
    ``lrs`` those of ``lrs.npz`` (a gradient bundle's inner learning rates of the adapted
    parameters, whose names are ``adapted``); both are empty for a kind without that file,
    and ``adapted`` is empty for a kind without an ``inner`` section. ``graphs`` holds the
    verified bytes of the kind's graph files (gradient: ``policy.onnx`` and ``adapt.onnx``);
    ``digest`` is the bundle's identity (:func:`bundle_digest`).
    """

    path: Path
    manifest: dict[str, Any]
    arrays: Mapping[str, dict[str, np.ndarray]]
    digest: str
    graphs: Mapping[str, bytes] = field(repr=False)
    #: entries of the directory that the manifest does not list: never read, not part of the
    #: bundle or its digest (a user's notes or saved adapter state may live beside the files)
    unlisted: tuple[str, ...] = ()

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
    def params(self) -> dict[str, np.ndarray]:
        """The arrays of ``params.npz`` (empty for a kind without it)."""
        return self.arrays.get(PARAMS_FILE, {})

    @property
    def lrs(self) -> dict[str, np.ndarray]:
        """The inner learning rates of ``lrs.npz`` (empty for a kind without it)."""
        return self.arrays.get(LRS_FILE, {})

    @property
    def discount(self) -> float:
        """The manifest's ``discount`` (a ``BundleError`` for a kind without one)."""
        if "discount" not in self.manifest:
            raise BundleError(
                f"{self.path / MANIFEST_FILE}: a {self.kind!r} bundle has no discount"
            )
        return float(self.manifest["discount"])

    @property
    def adapted(self) -> tuple[str, ...]:
        """The parameters the inner loop adapts (``inner.adapted``; empty without ``inner``)."""
        inner = self.manifest.get("inner")
        return tuple(inner["adapted"]) if isinstance(inner, Mapping) else ()

    @property
    def env_id(self) -> str:
        return str(self.manifest["env_id"])

    @property
    def kind(self) -> str:
        """The bundle kind, which picks the runtime (``gradient`` where the manifest has none)."""
        return str(self.manifest.get("kind", DEFAULT_KIND))

    @property
    def layout(self) -> BundleLayout:
        """The graphs and files of this bundle's kind."""
        return kinds.layout(self.kind)

    @property
    def identity(self) -> str:
        """The bundle's one identity, :attr:`digest` (kept under this name for saved states)."""
        return self.digest

    def file(self, name: str) -> Path:
        return self.path / name

    def graph(self, name: str) -> bytes:
        """The verified bytes of a graph file, e.g. ``policy.onnx`` (load sessions from these:
        the file on disk may have changed since)."""
        return self.graphs[name]

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read and verify a bundle directory; raise :class:`BundleError` naming the problem."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle directory {root} does not exist")
        where = root / MANIFEST_FILE
        raw = _read_regular(
            where,
            MAX_MANIFEST_BYTES,
            f"(is {root} a robometa bundle?)",
            f"the {MAX_MANIFEST_BYTES} allowed (MAX_MANIFEST_BYTES)",
        )
        manifest = _parse_manifest(raw, where)
        layout = _check_manifest(manifest, where)
        files, unlisted = _read_listed_files(root, manifest)
        arrays = {
            spec.file: _read_npz(files[spec.file], root / spec.file, spec.members(manifest))
            for spec in layout.arrays
        }
        for spec in layout.arrays:
            _check_arrays(root / spec.file, arrays[spec.file], spec.check)
        graphs = {spec.file: files[spec.file] for spec in layout.graphs.values()}
        for key, spec in layout.graphs.items():
            _check_graph(root / spec.file, key, spec, graphs[spec.file], manifest, arrays)
        return cls(root, manifest, arrays, bundle_digest(raw, files), graphs, unlisted)


# --------------------------------------------------------------------------- files


def _read_regular(path: Path, limit: int, hint: str = "", allowed: str = "") -> bytes:
    """The bytes of ``path`` if it is a regular file (not a symlink) of at most ``limit`` bytes
    (``allowed`` says where that limit comes from).

    The file is opened without following a symlink and without blocking (a pipe would hang
    ``read``), then checked with ``fstat`` on the open descriptor, so what is checked is what
    is read.
    """
    if path.is_symlink():
        raise BundleError(
            f"{path}: is a symbolic link; bundle files must be regular files inside the bundle"
        )
    flags = os.O_RDONLY
    for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing {hint}".rstrip()) from None
    except OSError as err:
        raise BundleError(f"{path}: cannot be opened ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(
                f"{path}: is not a regular file (a directory, pipe or device); bundle files "
                "must be regular files inside the bundle"
            )
        if info.st_size > limit:
            raise BundleError(f"{path}: {info.st_size} bytes, more than {allowed or limit}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(info.st_size + 1)
    except OSError as err:
        raise BundleError(f"{path}: cannot be read ({err.strerror})") from None
    finally:
        os.close(fd)
    if len(data) != info.st_size:
        raise BundleError(f"{path}: changed while it was read ({info.st_size} bytes before)")
    return data


def _read_listed_files(
    root: Path, manifest: Mapping[str, Any]
) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """Every listed file's bytes, after its size and sha256 matched the manifest, and the
    names of the directory's other entries (never opened: only listed files are read, and the
    graphs may not reference external data, so nothing unlisted can reach the runtime)."""
    listed: Mapping[str, Any] = manifest["files"]
    try:
        entries = sorted(os.listdir(root))
    except OSError as err:
        raise BundleError(f"{root}: cannot list the bundle directory ({err.strerror})") from None
    unlisted = tuple(e for e in entries if e != MANIFEST_FILE and e not in listed)
    files = {}
    for name, entry in listed.items():
        path = root / name
        size = entry["bytes"]
        data = _read_regular(
            path, size, f"(listed in {MANIFEST_FILE})", f"the {size} of files.{name}.bytes"
        )
        if len(data) != entry["bytes"]:
            raise BundleError(
                f"{path}: {len(data)} bytes, the manifest says {entry['bytes']}; the file is "
                "corrupted or was modified after export"
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            raise BundleError(
                f"{path}: sha256 mismatch (file {actual[:12]}..., manifest "
                f"{entry['sha256'][:12]}...); the file is corrupted or was modified after export"
            )
        files[name] = data
    return files, unlisted


# --------------------------------------------------------------------------- manifest


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _parse_manifest(raw: bytes, where: Path) -> dict[str, Any]:
    """Strict JSON: UTF-8, one object, no duplicate keys, bounded nesting, finite numbers."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(f"{where}: not UTF-8 ({err})") from None
    try:
        manifest = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKeyError as dup:
        raise BundleError(f"{where}: duplicate key {dup.key!r}; a key may appear once") from None
    except RecursionError:
        raise BundleError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, and integers beyond int's digit limit
        raise BundleError(f"{where}: not valid JSON ({_brief(err)})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: expected a JSON object at the top, got {_show(manifest)}")
    _check_json_values(manifest, where)
    return manifest


def _check_json_values(manifest: dict[str, Any], where: Path) -> None:
    """Nesting depth and finite numbers everywhere, without recursion; only containers are
    stacked, and a key's dotted name is only spelled out for the error."""
    stack: list[tuple[Any, int, Any]] = [(manifest, 1, None)]  # container, depth, path link
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BundleError(
                f"{where}: {_dotted(path)} is nested deeper than {MAX_JSON_DEPTH} levels"
            )
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1, (path, key)))
            elif isinstance(value, float) and not math.isfinite(value):
                _fail(where, _dotted((path, key)), value, "a finite number (not NaN or infinity)")


def _dotted(path: Any) -> str:
    """``a.b[0]`` from a path link ``(((None, "a"), "b"), 0)``."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".") or "(top)"


def _check_name(where: Path, key: str, value: Any) -> str:
    ok = isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS and value.isprintable()
    if not ok:
        _fail(where, key, value, f"a printable string of 1 to {MAX_NAME_CHARS} characters")
    return value


def _check_names(where: Path, key: str, value: Any, n: int) -> None:
    if not isinstance(value, list) or len(value) != n:
        _fail(where, key, value, f"a list of {n} names")
    for i, name in enumerate(value):
        _check_name(where, f"{key}[{i}]", name)


def _check_int(where: Path, key: str, value: Any, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        _fail(where, key, value, f"an integer in [{low}, {high}]")
    return value


def _check_bool(where: Path, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(where, key, value, "true or false")


def _check_object(where: Path, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(where, key, value, "a JSON object")
    return value


def _shape(entry: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(entry["shape"])


def _check_manifest(manifest: dict[str, Any], where: Path) -> BundleLayout:
    """Every key the runtime and the command line read, before any other file is opened: the
    shared sections here, the kind's own by its layout's ``check_manifest``; returns the
    layout of the bundle's kind."""
    version = manifest.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version {_show(version)} is not supported "
            f"(this runtime reads format {FORMAT_VERSION}); re-export the bundle with a "
            "matching robometa"
        )
    kind = manifest.get("kind", DEFAULT_KIND)
    known = kinds.known_kinds()
    if not isinstance(kind, str) or kind not in known:
        _fail(where, "kind", kind, f"a known bundle kind ({', '.join(known)})")
    layout = kinds.layout(kind)
    for key in (*_SHARED_HEAD_KEYS, *layout.sections, *_SHARED_TAIL_KEYS):
        _get(manifest, key, where)
    env_id = manifest["env_id"]
    if not isinstance(env_id, str) or not ENV_ID_PATTERN.fullmatch(env_id):
        raise BundleError(
            f"{where}: env_id {_show(env_id)} is not a robometa robot family id (expected "
            "robometa/<Name>-v<N>, letters and digits, no colon)"
        )
    _check_name(where, "algorithm", manifest["algorithm"])
    _check_bool(where, "privileged", manifest["privileged"])
    obs_dim = _check_observation(manifest, where)
    action = _check_object(where, "action", manifest["action"])
    n = _check_int(where, "action.n", _get(action, "n", where, "action."), 1, MAX_ACTIONS)
    _check_names(where, "action.names", _get(manifest, "action.names", where), n)
    if layout.check_manifest is not None:
        layout.check_manifest(manifest, where, obs_dim)
    _check_graph_entries(manifest, where, kind, layout)
    _check_file_entries(manifest, where, layout)
    _check_optional_sections(manifest, where)
    return layout


def _check_observation(manifest: Mapping[str, Any], where: Path) -> int:
    observation = _check_object(where, "observation", manifest["observation"])
    shape = _get(observation, "shape", where, "observation.")
    if not (isinstance(shape, list) and len(shape) == 1 and _is_int(shape[0])):
        _fail(where, "observation.shape", shape, f"[obs_dim] with obs_dim in [1, {MAX_OBS_DIM}]")
    obs_dim = _check_int(where, "observation.shape[0]", shape[0], 1, MAX_OBS_DIM)
    dtype = observation.get("dtype", "float32")
    if dtype != "float32":
        _fail(where, "observation.dtype", dtype, "'float32'")
    bounds = {}
    for key in ("low", "high"):
        values = _get(manifest, f"observation.{key}", where)
        if not isinstance(values, list) or len(values) != obs_dim:
            _fail(where, f"observation.{key}", values, f"a list of {obs_dim} numbers or null")
        for i, v in enumerate(values):
            if v is not None and (not _is_number(v) or not abs(v) <= _FLOAT32_MAX):
                _fail(where, f"observation.{key}[{i}]", v, "a float32 number or null")
        bounds[key] = values
    for i, (lo, hi) in enumerate(zip(bounds["low"], bounds["high"], strict=True)):
        if lo is not None and hi is not None and lo > hi:
            raise BundleError(
                f"{where}: observation.low[{i}] {lo!r} is above observation.high[{i}] {hi!r}"
            )
    _check_names(
        where, "observation.names", _get(observation, "names", where, "observation."), obs_dim
    )
    return obs_dim


def check_parameters(manifest: Mapping[str, Any], where: Path, adapted: bool = False) -> None:
    """The manifest's ``parameters`` section: 1 to ``MAX_PARAMETERS`` printable names, each
    a ``shape`` of at most ``MAX_PARAMETER_NDIM`` positive integers, ``MAX_PARAMETER_ELEMENTS``
    numbers in all; with ``adapted``, each also has a boolean ``adapted`` (a gradient bundle's).
    For a kind's ``check_manifest`` (with :data:`PARAMS_ARRAY`)."""
    declared = _check_object(where, "parameters", manifest["parameters"])
    if not 1 <= len(declared) <= MAX_PARAMETERS:
        _fail(where, "parameters", declared, f"1 to {MAX_PARAMETERS} parameters")
    total = 0
    for name, entry in declared.items():
        key = f"parameters.{name}"
        _check_name(where, "a key of parameters", name)
        _check_object(where, key, entry)
        shape = _get(entry, "shape", where, f"{key}.")
        ok = isinstance(shape, list) and len(shape) <= MAX_PARAMETER_NDIM
        if not ok or not all(_is_int(d) and 1 <= d <= MAX_PARAMETER_ELEMENTS for d in shape):
            _fail(where, f"{key}.shape", shape, f"at most {MAX_PARAMETER_NDIM} positive integers")
        total += math.prod(shape)
        if total > MAX_PARAMETER_ELEMENTS:
            raise BundleError(
                f"{where}: parameters hold more than {MAX_PARAMETER_ELEMENTS} numbers "
                f"(at {key}.shape {shape})"
            )
        if adapted:
            _check_bool(where, f"{key}.adapted", _get(entry, "adapted", where, f"{key}."))


def check_support_size(where: Path, key: str, support: Any, obs_dim: int) -> None:
    """A manifest's ``key`` (a support size) is an integer in ``[1, MAX_SUPPORT_SIZE]`` whose
    transition buffer of ``obs_dim`` observations fits in ``MAX_BUFFER_BYTES``."""
    _check_int(where, key, support, 1, MAX_SUPPORT_SIZE)
    buffer = support * (2 * obs_dim + 3) * 4
    if buffer > MAX_BUFFER_BYTES:
        raise BundleError(
            f"{where}: {key} {support} transitions of obs_dim {obs_dim} need a "
            f"{buffer}-byte buffer, more than the {MAX_BUFFER_BYTES} allowed"
        )


def _check_graph_entries(
    manifest: Mapping[str, Any], where: Path, kind: str, layout: BundleLayout
) -> None:
    """The ``graphs`` table lists exactly the kind's graphs, each with its file, the format's
    ONNX versions and lists of input and output names."""
    graphs = _check_object(where, "graphs", manifest["graphs"])
    for key, spec in layout.graphs.items():
        name = spec.file
        entry = _check_object(where, f"graphs.{key}", _get(graphs, key, where, "graphs."))
        if entry.get("file") != name:
            _fail(where, f"graphs.{key}.file", entry.get("file"), repr(name))
        for part, want in (("opset", ONNX_OPSET), ("ir_version", ONNX_IR_VERSION)):
            if entry.get(part) != want:
                _fail(where, f"graphs.{key}.{part}", entry.get(part), str(want))
        for part in ("inputs", "outputs"):
            names = _get(entry, part, where, f"graphs.{key}.")
            if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
                _fail(where, f"graphs.{key}.{part}", names, "a list of names")
    for key in graphs:
        if key not in layout.graphs:
            raise BundleError(
                f"{where}: graphs lists {_show(key)}, not a graph of a {kind!r} bundle (its "
                f"graphs: {', '.join(layout.graphs)})"
            )


def _npz_limit(members: ArrayShapes) -> int:
    """The most bytes an ``.npz`` of these members can take."""
    largest = (max(4 * math.prod(s) for s in shapes) for shapes in members.values())
    return sum(size + _NPZ_MEMBER_OVERHEAD for size in largest) + 1024


def _check_file_entries(manifest: Mapping[str, Any], where: Path, layout: BundleLayout) -> None:
    files = _check_object(where, "files", manifest["files"])
    for name in layout.files:
        if name not in files:
            raise BundleError(f"{where}: required file {name!r} is not listed in 'files'")
    limits = {g.file: MAX_GRAPH_BYTES for g in layout.graphs.values()}
    limits |= {a.file: _npz_limit(a.members(manifest)) for a in layout.arrays}
    limits[CONFIG_FILE] = MAX_CONFIG_BYTES
    allowed = (*layout.files, CONFIG_FILE)
    for name, entry in files.items():
        if name not in allowed:
            raise BundleError(
                f"{where}: files lists {_show(name)}; a bundle holds only "
                f"{', '.join(allowed)} besides {MANIFEST_FILE}"
            )
        _check_object(where, f"files.{name}", entry)
        digest = _get(entry, "sha256", where, f"files.{name}.")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            _fail(where, f"files.{name}.sha256", digest, "64 lowercase hex digits")
        _check_int(
            where,
            f"files.{name}.bytes",
            _get(entry, "bytes", where, f"files.{name}."),
            0,
            limits[name],
        )


def _check_optional_sections(manifest: Mapping[str, Any], where: Path) -> None:
    if "dynamics" in manifest:
        dynamics = _check_object(where, "dynamics", manifest["dynamics"])
        overrides = dynamics.get("overrides")
        if overrides is not None:
            _check_object(where, "dynamics.overrides", overrides)
        if "family" in dynamics:
            _check_name(where, "dynamics.family", dynamics["family"])
    if "config" in manifest:
        config = _check_object(where, "config", manifest["config"])
        if "adaptation" in config:
            adaptation = _check_object(where, "config.adaptation", config["adaptation"])
            eps = adaptation.get("support_epsilon", 0.0)
            if not _is_number(eps) or not 0.0 <= eps <= 1.0:
                _fail(where, "config.adaptation.support_epsilon", eps, "a number in [0, 1]")


# The helpers a kind's ``check_manifest`` builds on (same messages as the shared checks).
fail = _fail
manifest_key = _get
check_object = _check_object
check_int = _check_int
check_bool = _check_bool
check_name = _check_name
is_number = _is_number


# --------------------------------------------------------------------------- arrays


def _read_npz(
    data: bytes, where: Path, expected: Mapping[str, list[tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, each one's header checked against ``expected`` shapes (float32)
    before its data is decompressed, and no more than those shapes' bytes ever read."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            arrays: dict[str, np.ndarray] = {}
            for member in archive.infolist():
                key = member.filename.removesuffix(".npy")
                if key not in expected or not member.filename.endswith(".npy"):
                    raise BundleError(
                        f"{where}: holds {_show(member.filename)}, not an array the manifest "
                        f"lists ({', '.join(expected)})"
                    )
                if key in arrays:
                    raise BundleError(f"{where}: holds {key!r} twice")
                arrays[key] = _read_member(archive, member, where, key, expected[key])
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise BundleError(f"{where}: not a readable .npz file ({_brief(err)})") from None
    except (NotImplementedError, RuntimeError) as err:  # compression method, encryption
        raise BundleError(f"{where}: not a readable .npz file ({_brief(err)})") from None
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise BundleError(
            f"{where}: arrays {sorted(arrays)} do not match the manifest's {sorted(expected)} "
            f"(missing {', '.join(missing)})"
        )
    return arrays


def _read_member(
    archive: zipfile.ZipFile,
    member: zipfile.ZipInfo,
    where: Path,
    key: str,
    shapes: list[tuple[int, ...]],
) -> np.ndarray:
    largest = max(4 * math.prod(s) for s in shapes) + _NPY_HEADER_MAX
    if member.file_size > largest:
        raise BundleError(
            f"{where}: {key} decompresses to {member.file_size} bytes, more than the {largest} "
            f"its manifest shape {list(shapes[-1])} allows"
        )
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(f, max_header_size=_NPY_HEADER_MAX)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(f, max_header_size=_NPY_HEADER_MAX)
        else:
            raise BundleError(f"{where}: {key} has npy format version {version}, expected 1.0")
        shape, fortran, dtype = header
        is_float32 = dtype.kind == "f" and dtype.itemsize == 4 and dtype.fields is None
        if not is_float32 or shape not in shapes:
            raise BundleError(
                f"{where}: {key} is {dtype}{list(shape)}, expected float32"
                f"{' or float32'.join(str(list(s)) for s in shapes)}"
            )
        size = 4 * math.prod(shape)
        raw = f.read(size)
        if len(raw) != size or f.read(1):  # reading to the end also checks the CRC
            raise BundleError(f"{where}: {key} holds {len(raw)}+ bytes of data, expected {size}")
    array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(array, dtype=np.float32, order="C")  # a copy: not a view of the file


def _check_arrays(
    where: Path,
    arrays: dict[str, np.ndarray],
    check: Callable[[Path, str, np.ndarray], None] | None,
) -> None:
    """Every member finite, then the kind's own check of it."""
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise BundleError(f"{where}: {name} contains NaN or inf")
        if check is not None:
            check(where, name, value)


# --------------------------------------------------------------------------- graphs

# The ONNX messages that can hold a TensorProto, field number -> message kind (onnx.proto).
_ONNX_FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_MODEL_IR_VERSION, _MODEL_OPSET_IMPORT = 1, 8  # ModelProto fields
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2  # OperatorSetIdProto fields


def _onnx_versions(data: bytes) -> tuple[int, dict[str, int]]:
    """A model's IR version and its opsets by domain (``ai.onnx`` for the default one), read
    from the top-level ModelProto fields of the wire format."""
    ir, opsets, pos, end = 0, {}, 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if number == _MODEL_IR_VERSION:
                ir = value
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if number == _MODEL_OPSET_IMPORT:
                domain, version, p, stop = "", 0, pos, pos + length
                while p < stop:
                    k, p = _varint(data, p, stop)
                    if k & 7 == 0:
                        v, p = _varint(data, p, stop)
                        if k >> 3 == _OPSET_VERSION:
                            version = v
                    elif k & 7 == 2:
                        n, p = _varint(data, p, stop)
                        if k >> 3 == _OPSET_DOMAIN:
                            domain = data[p : p + n].decode("utf-8", "replace")
                        p += n
                    else:
                        raise ValueError(f"unsupported opset field at byte {p}")
                opsets[domain or "ai.onnx"] = version
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
    return ir, opsets


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _external_tensor(data: bytes) -> str | None:
    """The name of the first tensor in an ONNX model whose data lives in another file, if any.

    A walk over the protobuf wire format, through every message that can hold a tensor
    (graphs, nodes, attributes and their subgraphs, functions, sparse tensors): onnxruntime
    would resolve such a path itself, relative to the graph's directory, or to the working
    directory for a graph loaded from bytes. Raises ``ValueError`` for malformed protobuf.
    """
    stack = [("model", 0, len(data), 0)]
    while stack:
        kind, pos, end, depth = stack.pop()
        if depth > _ONNX_MAX_DEPTH:
            raise ValueError(f"messages nested deeper than {_ONNX_MAX_DEPTH}")
        fields = _ONNX_FIELDS[kind]
        name, external = "", False
        while pos < end:
            key, pos = _varint(data, pos, end)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(data, pos, end)
                if kind == "tensor" and number == _TENSOR_DATA_LOCATION and value == 1:
                    external = True
            elif wire == 1 or wire == 5:
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                length, pos = _varint(data, pos, end)
                if pos + length > end:
                    raise ValueError(f"truncated field {number} at byte {pos}")
                if number in fields:
                    stack.append((fields[number], pos, pos + length, depth + 1))
                elif kind == "tensor" and number == _TENSOR_EXTERNAL_DATA:
                    external = True
                elif kind == "tensor" and number == _TENSOR_NAME:
                    name = data[pos : pos + length].decode("utf-8", "replace")
                pos += length
            else:
                raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
        if pos > end:
            raise ValueError(f"truncated message ending at byte {end}")
        if external:
            return name or "(unnamed)"
    return None


def _verification_session(data: bytes, where: Path) -> Any:
    """An onnxruntime session for the graph's verified bytes: ONNX format only, one thread, no
    graph optimizations (verification should not pay for constant folding)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.load_model_format", "ONNX")
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{where}: onnxruntime cannot load the graph ({_brief(err)})") from None


def _show_spec(spec: TensorSpec) -> str:
    dtype, dims = spec
    return f"{dtype}[{', '.join('batch' if d is None else str(d) for d in dims)}]"


def _arg_spec(arg: Any) -> TensorSpec:
    """A graph input's or output's declared element type and dims (symbolic dims -> None)."""
    return arg.type, tuple(d if isinstance(d, int) else None for d in arg.shape or ())


def _expect(
    where: Path, what: str, args: Mapping[str, Any], expected: Mapping[str, TensorSpec]
) -> None:
    """Graph inputs (or outputs) are exactly ``expected``, with their types and shapes."""
    if set(args) != set(expected):
        extra, missing = sorted(set(args) - set(expected)), sorted(set(expected) - set(args))
        raise BundleError(
            f"{where}: the graph's {what} do not match the manifest (unexpected {extra}, "
            f"missing {missing})"
        )
    for name, spec in expected.items():
        found = _arg_spec(args[name])
        if found != spec:
            raise BundleError(
                f"{where}: {what[:-1]} {name!r} is {_show_spec(found)}, the manifest implies "
                f"{_show_spec(spec)}"
            )


def _check_graph(
    where: Path,
    key: str,
    spec: GraphSpec,
    data: bytes,
    manifest: Mapping[str, Any],
    arrays: Mapping[str, dict[str, np.ndarray]],
) -> None:
    """Load one graph from its verified bytes and check it against the manifest and arrays:
    the format's rules for every graph, then the inputs and outputs its kind declares."""
    try:
        external = _external_tensor(data)
    except ValueError as err:
        raise BundleError(f"{where}: not a valid ONNX model ({err})") from None
    if external is not None:
        raise BundleError(
            f"{where}: tensor {external!r} keeps its data in an external file; a bundle's "
            "graphs must hold all their data (re-export without external data)"
        )
    try:
        ir, opsets = _onnx_versions(data)
    except ValueError as err:
        raise BundleError(f"{where}: not a valid ONNX model ({err})") from None
    if ir != ONNX_IR_VERSION or opsets.get("ai.onnx") != ONNX_OPSET:
        raise BundleError(
            f"{where}: ONNX IR {ir}, opsets {opsets}; the bundle format is IR "
            f"{ONNX_IR_VERSION} with opset {ONNX_OPSET} (re-export with this robometa)"
        )
    session = _verification_session(data, where)
    stamped = session.get_modelmeta().custom_metadata_map.get("robometa.graph", where.name)
    if stamped != where.name:
        raise BundleError(f"{where}: the graph is stamped {stamped!r} (robometa.graph metadata)")
    for part, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        names = [a.name for a in args]
        if manifest["graphs"][key][part] != names:
            raise BundleError(
                f"{where}: the graph's {part} {_show(names)} differ from the manifest's "
                f"graphs.{key}.{part} {_show(manifest['graphs'][key][part])}"
            )
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    # Parameter inputs: any of params.npz's (a gradient policy.onnx takes those Q uses).
    params = arrays.get(PARAMS_FILE, {})
    used = [k for k in params if PARAM_PREFIX + k in inputs]
    expected_in = {PARAM_PREFIX + k: tensor_spec("float", params[k].shape) for k in used}
    feeds: dict[str, np.ndarray] = {PARAM_PREFIX + k: params[k] for k in used}
    io = spec.io(GraphContext(where, manifest, arrays, used))
    expected_in.update(io.inputs)
    feeds.update(io.feeds)
    _expect(where, "inputs", inputs, expected_in)
    _expect(where, "outputs", outputs, io.outputs)
    values = _probe(where, session, feeds, io.outputs)
    if spec.check_probe is not None:
        spec.check_probe(where, values, manifest)


_ORT_TYPES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.int64): "tensor(int64)"}


def _probe(
    where: Path, session: Any, feeds: dict[str, np.ndarray], expected: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray]:
    """Run the graph once on a batch of two zero rows: every output has its declared type and
    shape. Returns the outputs (for the kind's own check of them)."""
    names = list(expected)
    try:
        values = dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as err:  # onnxruntime raises its own exception types
        raise BundleError(f"{where}: the graph fails on a probe batch ({_brief(err)})") from None
    for name, value in values.items():
        dtype, dims = expected[name]
        want = tuple(2 if d is None else d for d in dims)
        if _ORT_TYPES.get(value.dtype) != dtype or value.shape != want:
            raise BundleError(
                f"{where}: output {name!r} of a probe batch of 2 is {value.dtype}"
                f"{list(value.shape)}, expected {_show_spec(expected[name])}"
            )
    return values
