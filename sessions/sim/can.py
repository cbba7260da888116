"""The CAN motor-drive simulator, at its public path; it lives beside its kind in
:mod:`sessions.actors.canbus.sim` (python-can is needed: the ``can`` extra)."""

from sessions.actors.canbus.sim import *  # noqa: F403
from sessions.actors.canbus.sim import __all__  # noqa: F401 - re-exported
