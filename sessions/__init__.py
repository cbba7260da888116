"""sessions: supervised resource actors.

Each resource (database, cache, broker, bus, API) is owned by one thread actor that
serializes access to it; an Erlang/OTP-style supervisor restarts failed actors per
the policies in a config file; callers use stable handles whose methods return
futures, from plain threads or asyncio.
"""

import logging

from sessions._config import ResourceConfig, SupervisorConfig, SystemConfig
from sessions._errors import (
    CallTimeout,
    ChildRunning,
    ConfigError,
    DeviceError,
    InjectedFault,
    LeaseBroken,
    ResourceBroken,
    ResourceFault,
    ResourceUnavailable,
    SessionsError,
)
from sessions._registry import SessionManager, SessionRegistry
from sessions._runtime.contract import IGNORE, Deferred, ResourceActor, ResourceContext
from sessions._runtime.futures import SessionFuture
from sessions._runtime.inject import InjectedStall
from sessions._system import (
    ChildCount,
    ChildInfo,
    FaultInjector,
    Handle,
    HandleView,
    Lease,
    Stall,
    System,
    check_childspecs,
    start,
)
from sessions.canbus import CANBusSessionManager
from sessions.database import DatabaseSessionManager
from sessions.http import HTTPSessionManager
from sessions.i2c import I2CSessionManager
from sessions.kafka import KafkaSessionManager
from sessions.messages import ChildState, CircuitState, Superseded
from sessions.modbus import ModbusSessionManager
from sessions.mqtt import MQTTSessionManager
from sessions.opcua import OPCUASessionManager
from sessions.redis import RedisSessionManager
from sessions.supervisor import Backoff, RestartIntensity

logging.getLogger("sessions").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - plain sorted() order, as tests/test_exports.py checks
    "Backoff",
    "CANBusSessionManager",
    "CallTimeout",
    "ChildCount",
    "ChildInfo",
    "ChildRunning",
    "ChildState",
    "CircuitState",
    "ConfigError",
    "DatabaseSessionManager",
    "Deferred",
    "DeviceError",
    "FaultInjector",
    "HTTPSessionManager",
    "Handle",
    "HandleView",
    "I2CSessionManager",
    "IGNORE",
    "InjectedFault",
    "InjectedStall",
    "KafkaSessionManager",
    "Lease",
    "LeaseBroken",
    "MQTTSessionManager",
    "ModbusSessionManager",
    "OPCUASessionManager",
    "RedisSessionManager",
    "ResourceActor",
    "ResourceBroken",
    "ResourceConfig",
    "ResourceContext",
    "ResourceFault",
    "ResourceUnavailable",
    "RestartIntensity",
    "SessionFuture",
    "SessionManager",
    "SessionRegistry",
    "SessionsError",
    "Stall",
    "Superseded",
    "SupervisorConfig",
    "System",
    "SystemConfig",
    "__version__",
    "check_childspecs",
    "start",
]
