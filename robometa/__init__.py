"""robometa: meta-learned DQN policies that adapt to new robot dynamics.

This package stays light on import: the training side (torch) loads in its submodules, and
``robometa.deploy`` (numpy + onnxruntime) never pulls torch, PyBullet or gymnasium.
"""

__version__ = "0.1.0"
