"""Bundle kinds: the manifest's ``kind`` names the runtime that serves the bundle.

A kind is a name and a lazy ``"module:Class"`` entry point to its runtime, a subclass of
:class:`robometa.deploy.adapter.Adapter` whose ``layout`` (a
:class:`robometa.deploy.bundle.BundleLayout`) declares the graphs and files a bundle of that
kind holds. The module is imported on first use, so listing the kinds imports nothing.

| kind | runtime | what ``adapt`` does |
|---|---|---|
| ``gradient`` | :class:`robometa.deploy.gradient.GradientAdapter` | guarded gradient steps of ``adapt.onnx`` (every gradient and DQN method) |
| ``context`` | :class:`robometa.deploy.context.ContextAdapter` | one forward pass of ``encoder.onnx`` over the buffer infers the context (the ``context`` family) |
| ``history`` | :class:`robometa.deploy.history.HistoryAdapter` | ``history.onnx`` re-estimates the extrinsics from the last transitions after every observed step; ``adapt`` rebuilds the window from the buffer (the ``rma`` family) |
| ``taskrate`` | :class:`robometa.deploy.taskrate.TaskRateAdapter` | guarded gradient steps of ``adapt.onnx``, whose rate network generates the learning rates from the buffer (``taskrate``) |
| ``cavia-encoder`` | :class:`robometa.deploy.cavia_encoder.CaviaEncoderAdapter` | ``encoder.onnx`` infers CAVIA's initial context from the buffer, guarded steps of ``adapt.onnx`` refine it (``cavia-encoder``) |
| ``recurrent`` | :class:`robometa.deploy.recurrent.RecurrentAdapter` | every observed transition advances a GRU state with ``memory.onnx``; ``adapt`` re-derives it from the buffer, ``reset`` zeros it (the ``recurrent`` family) |

A new kind is its runtime module alone: an ``Adapter`` subclass whose ``layout`` declares the
kind's graphs (:class:`~robometa.deploy.bundle.GraphSpec`), array files
(:class:`~robometa.deploy.bundle.ArraySpec`), its own manifest sections and their check
(``BundleLayout(graphs, arrays, sections, check_manifest)``); the reader checks the shared
sections itself and verifies the rest by that layout, and ``robometa-deploy`` asks the runtime
what it needs (``support_size``, ``guard_options``, ``describe``). On the training side the
family's ``write_bundle`` and ``check_bundle`` (:class:`robometa.methods.base.Method`) write
and verify it (``tests/test_plugin_kind.py`` builds one in a test module).

A plug-in adds its kind with one call before loading its bundles::

    from robometa.deploy.kinds import register_kind

    register_kind("mykind", "mypackage.runtime:MyAdapter")

or, installed as a package, with an entry point in the group ``robometa.bundle_kinds`` (name:
the kind, value: its runtime), read the first time a kind is looked up, so the device needs
no registering code at all::

    [project.entry-points."robometa.bundle_kinds"]
    mykind = "mypackage.runtime:MyAdapter"

A manifest without ``kind`` is a ``gradient`` bundle (:data:`DEFAULT_KIND`; bundles exported
before kinds existed have none).
"""

from __future__ import annotations

import importlib
import re
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robometa.deploy.adapter import Adapter
    from robometa.deploy.bundle import BundleLayout

#: the Python entry-point group installed packages add bundle kinds through
ENTRY_POINT_GROUP = "robometa.bundle_kinds"
#: the kind of a manifest without a ``kind`` key.
DEFAULT_KIND = "gradient"
#: bundle kind -> its runtime, ``"module:Class"`` (imported on first use).
KINDS: dict[str, str] = {
    "gradient": "robometa.deploy.gradient:GradientAdapter",
    "context": "robometa.deploy.context:ContextAdapter",
    "history": "robometa.deploy.history:HistoryAdapter",
    "taskrate": "robometa.deploy.taskrate:TaskRateAdapter",
    "cavia-encoder": "robometa.deploy.cavia_encoder:CaviaEncoderAdapter",
    "recurrent": "robometa.deploy.recurrent:RecurrentAdapter",
}
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}", re.ASCII)
_ENTRY_POINT = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)


def register_kind(name: str, entry_point: str) -> None:
    """Add the bundle kind ``name`` served by the runtime class at ``entry_point``
    (``"module:Class"``, imported when a bundle of that kind is first loaded).

    ``name`` is lowercase letters, digits, ``_`` and ``-`` (starting with a letter, at most 64
    characters); a name already registered is refused (``ValueError`` naming its runtime), as
    is an entry point that is not ``"module:Class"``.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"bundle kind name {name!r} must be 1 to 64 lowercase letters, digits, '_' or '-', "
            "starting with a letter"
        )
    if name in KINDS:
        raise ValueError(f"bundle kind {name!r} is already registered (runtime {KINDS[name]})")
    if not isinstance(entry_point, str) or not _ENTRY_POINT.fullmatch(entry_point):
        raise ValueError(
            f"bundle kind {name!r}: entry point {entry_point!r} must be 'module:Class'"
        )
    KINDS[name] = entry_point


_plugins_read = False


def _read_plugins() -> None:
    """Register the kinds installed packages declare (once). A bad declaration is reported as
    a warning naming it and skipped: the builtin kinds still load."""
    global _plugins_read
    if _plugins_read:
        return
    _plugins_read = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if KINDS.get(ep.name) == ep.value:
            continue
        try:
            register_kind(ep.name, ep.value)
        except ValueError as err:
            warnings.warn(f"robometa bundle kind plug-in {ep.name!r}: {err}", stacklevel=3)


def known_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (``gradient`` first)."""
    _read_plugins()
    return tuple(KINDS)


def runtime_class(name: str) -> type[Adapter]:
    """The runtime class of the bundle kind ``name``, its module imported on first use.

    An unknown kind is a ``ValueError`` naming the known ones; an entry point that cannot be
    imported, or that is not an ``Adapter`` subclass, an ``ImportError``/``TypeError`` naming
    the kind and the entry point.
    """
    from robometa.deploy.adapter import Adapter

    _read_plugins()
    if name not in KINDS:
        raise ValueError(f"unknown bundle kind {name!r} (known kinds: {', '.join(KINDS)})")
    entry = KINDS[name]
    module_name, _, attr = entry.partition(":")
    try:
        runtime = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"bundle kind {name!r}: cannot import its runtime {entry} ({err})"
        ) from err
    if not (isinstance(runtime, type) and issubclass(runtime, Adapter)):
        raise TypeError(
            f"bundle kind {name!r}: its runtime {entry} is not a subclass of "
            "robometa.deploy.adapter.Adapter"
        )
    return runtime


def layout(name: str) -> BundleLayout:
    """The graphs and files a bundle of kind ``name`` holds (its runtime's ``layout``)."""
    return runtime_class(name).layout
