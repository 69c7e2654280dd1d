"""robometa: meta-learned DQN policies that adapt to new robot dynamics.

This package stays light on import: the training side (torch) loads in its submodules, and
``robometa.deploy`` (numpy + onnxruntime) never pulls torch, PyBullet or gymnasium.
"""

import os as _os

__version__ = "0.1.0"

# In a source checkout that is not installed (bare ``pytest`` from the repository root), the
# subpackages pyproject's package-dir maps (``envs/`` = robometa.envs, ``deploy/``,
# ``configs/``) sit beside this directory: look for them there too. An installed robometa
# (wheel or editable) has no pyproject.toml beside its package and is left as it is.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "envs", "__init__.py")
):
    __path__.append(_root)
del _root
