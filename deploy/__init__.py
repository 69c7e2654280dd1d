"""robometa's on-device adaptation runtime: numpy and onnxruntime only.

```python
from robometa.deploy import Adapter

adapter = Adapter.load("bundles/cartpole")       # verifies the manifest and file hashes
action = adapter.act(obs)                        # greedy action for one observation
adapter.observe(obs, action, reward, next_obs, terminated)
report = adapter.adapt(steps=5)                  # guarded gradient steps, rolled back if worse
adapter.save_state("adapter-state.npz")          # atomic; load_state() restores it
```

``Adapter.load`` builds the runtime of the bundle's kind (the manifest's ``kind``; today every
bundle is ``gradient``, :class:`GradientAdapter`); a plug-in adds a kind with
:func:`robometa.deploy.kinds.register_kind`.

This package never imports torch, PyBullet or gymnasium (the command line imports the
simulated robots lazily, only when asked to run against one).
"""

from robometa.deploy.bundle import FORMAT_VERSION, Bundle, BundleError
from robometa.deploy.kinds import register_kind
from robometa.deploy.runtime import (
    Adapter,
    AdaptReport,
    GradientAdapter,
    StateError,
    TransitionBuffer,
    Transitions,
    WriteError,
)

__all__ = [
    "FORMAT_VERSION",
    "AdaptReport",
    "Adapter",
    "Bundle",
    "BundleError",
    "GradientAdapter",
    "StateError",
    "TransitionBuffer",
    "Transitions",
    "WriteError",
    "register_kind",
]
