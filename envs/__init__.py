"""robometa's robot families: PyBullet environments with randomized dynamics.

Importing this package registers every family with gymnasium, so that
``gymnasium.make("robometa/CartPole-v0")`` works. Entry points are lazy
``"module:Class"`` strings: PyBullet loads only when an env is made.
"""

from gymnasium.envs.registration import register, registry
from robometa.envs.dynamics import DynamicsSpace, Param, Task, dump_tasks, load_tasks

#: every registered robot family: id -> entry point
FAMILIES: dict[str, str] = {
    "robometa/CartPole-v0": "robometa.envs.cartpole:CartPoleEnv",
    "robometa/Reacher-v0": "robometa.envs.reacher:ReacherEnv",
    "robometa/ArmReach-v0": "robometa.envs.arm_reach:ArmReachEnv",
    "robometa/DiffDrive-v0": "robometa.envs.diff_drive:DiffDriveEnv",
}

for _env_id, _entry_point in FAMILIES.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, disable_env_checker=True)

__all__ = ["FAMILIES", "DynamicsSpace", "Param", "Task", "dump_tasks", "load_tasks"]
