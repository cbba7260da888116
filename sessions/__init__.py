"""sessions: supervised resource actors.

Each resource (database, cache, broker, bus, API) is owned by one thread actor that
serializes access to it; an Erlang/OTP-style supervisor restarts failed actors per
the policies in a config file; callers use stable handles whose methods return
futures, from plain threads or asyncio.
"""

import importlib
import logging
from typing import Any

from sessions._config import ResourceConfig, SupervisorConfig, SystemConfig
from sessions._errors import (
    CallTimeout,
    ChildRunning,
    ConfigError,
    DeviceError,
    ResourceFault,
    ResourceUnavailable,
    SessionsError,
)
from sessions._futures import SessionFuture
from sessions._registry import SessionManager, SessionRegistry
from sessions._system import ChildCount, ChildInfo, Handle, System, check_childspecs, start
from sessions.actors import IGNORE, ResourceActor
from sessions.actors._base import Deferred
from sessions.actors.canbus import CANBusSessionManager
from sessions.actors.http import HTTPSessionManager
from sessions.actors.i2c import I2CSessionManager
from sessions.supervisor import Backoff, RestartIntensity

logging.getLogger("sessions").addHandler(logging.NullHandler())

# Session managers whose module imports its driver at import time: loaded on first use,
# so `import sessions` never needs an optional extra.
_LAZY = {
    "DatabaseSessionManager": "sessions.actors.database",
    "KafkaSessionManager": "sessions.actors.kafka",
    "RedisSessionManager": "sessions.actors.redis",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sessions' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - plain sorted() order, as tests/test_exports.py checks
    "Backoff",
    "CANBusSessionManager",
    "CallTimeout",
    "ChildCount",
    "ChildInfo",
    "ChildRunning",
    "ConfigError",
    "DatabaseSessionManager",
    "Deferred",
    "DeviceError",
    "HTTPSessionManager",
    "Handle",
    "I2CSessionManager",
    "IGNORE",
    "KafkaSessionManager",
    "RedisSessionManager",
    "ResourceActor",
    "ResourceConfig",
    "ResourceFault",
    "ResourceUnavailable",
    "RestartIntensity",
    "SessionFuture",
    "SessionManager",
    "SessionRegistry",
    "SessionsError",
    "SupervisorConfig",
    "System",
    "SystemConfig",
    "__version__",
    "check_childspecs",
    "start",
]
