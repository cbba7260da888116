"""In-process simulators of hardware buses, so code runs and is tested without hardware.

Each simulator lives beside its kind (``sessions/actors/<kind>/sim.py``); these modules
are their short public paths: ``sessions.sim.i2c``, ``sessions.sim.can``."""
