"""The I2C simulator, at its public path; it lives beside its kind in
:mod:`sessions.actors.i2c.sim`."""

from sessions.actors.i2c.sim import *  # noqa: F403
from sessions.actors.i2c.sim import __all__  # noqa: F401 - re-exported
