"""A simulated motor-drive node on a python-can bus, for CAN request/response without hardware.

``MotorDriveSim`` plays a remote CAN node (as python-can's ``VirtualBus`` plays an
interface), so the CAN actor, the demo and the tests exercise real request/response
code over a ``virtual`` channel. It models the behaviours that CAN client code must
cope with, not the electrical layer:

* **Request/response by identifier.** A client sends a request frame to the node's
  request id and waits for a reply on the node's response id, interleaved with other
  traffic (the node's periodic status broadcasts), as with CANopen SDOs.
* **Physical state that changes over time.** The speed ramps toward the setpoint at
  ``ramp_rpm_per_s``, so a reading taken right after a set shows motion, not the target.
* **Faults.** :meth:`MotorDriveSim.bus_off` takes the node off the bus: it sends one
  SocketCAN-style bus-off error frame (see :func:`is_bus_off_frame`), then stays silent
  until :meth:`MotorDriveSim.recover`. :meth:`MotorDriveSim.silence` keeps it on the bus
  (still broadcasting) but deaf to requests, so clients see request timeouts;
  :meth:`MotorDriveSim.set_response_delay` makes replies slow rather than absent.
  :meth:`MotorDriveSim.freeze` hangs the node: it stops reading the bus and sends
  nothing until :meth:`MotorDriveSim.thaw`. Give its bus a bounded receive queue
  (``rx_queue_size=N``, a ``virtual`` bus keyword) and a sender on the channel then
  blocks once that queue is full, for its send timeout (python-can's ``virtual``
  interface waits on each receiver's queue in turn), as a sender on a real bus whose
  frames nobody acknowledges does.
  Malformed or unknown requests get an error reply; they never stop the node.

Protocol (node id ``n`` in 1..127; standard 11-bit ids; integers little-endian;
CANopen-SDO-flavoured but simplified). Requests go to ``0x600 + n``, replies come from
``0x580 + n``:

=================  ============================  ====================================
Request            Request data                  Reply data
=================  ============================  ====================================
SET_SPEED          ``[0x01, rpm int16]``         ``[0x01, status, setpoint int16]``
GET_SPEED          ``[0x02]``                    ``[0x02, 0x00, speed int16]``
GET_STATUS         ``[0x03]``                    ``[0x03, state, temperature int8]``
unknown command    ``[cmd, ...]``                ``[0xFF, cmd, 0x01]``
malformed          empty, or too short for cmd   ``[0xFF, cmd (0x00 if empty), 0x02]``
=================  ============================  ====================================

Frames the node sends unasked:

================  ===============================  ==============================================
Frame             CAN id                           Data
================  ===============================  ==============================================
status broadcast  ``0x180 + n``                    ``[state, speed int16, setpoint int16, ctr]``
bus-off           error frame, ``CAN_ERR_BUSOFF``  8 zero bytes, as SocketCAN reports bus-off
================  ===============================  ==============================================

The status broadcast goes out every ``status_period`` seconds; ``ctr`` is a uint8 that
counts broadcasts and wraps at 256. The bus-off frame is an error frame whose arbitration
id carries the SocketCAN error class ``CAN_ERR_BUSOFF`` (``0x40``); ``bus_off()`` sends it
once.

SET_SPEED ``status`` is :data:`STATUS_OK` (0) or :data:`STATUS_OUT_OF_RANGE` (1, when
``|rpm| > max_rpm``; the setpoint is then left unchanged and the reply carries the setpoint
in force). ``state`` is a :class:`DriveState`. The error reply's last byte is
:data:`ERR_UNKNOWN_COMMAND` or :data:`ERR_MALFORMED`. Extra trailing request bytes are
ignored (CANopen pads frames to 8 bytes); remote, error and extended-id frames are not
requests and are ignored. :func:`decode_reply` turns any reply into
``Reply(command, status, value)``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import struct
import threading
import time
from enum import IntEnum
from types import TracebackType
from typing import Any, Final, NamedTuple

import can

from sessions.actors.canbus import CAN_ERR_BUSOFF, is_bus_off_frame

__all__ = [
    "CAN_ERR_BUSOFF",
    "CMD_ERROR",
    "CMD_GET_SPEED",
    "CMD_GET_STATUS",
    "CMD_SET_SPEED",
    "ERR_MALFORMED",
    "ERR_UNKNOWN_COMMAND",
    "NODE_ID_MAX",
    "NODE_ID_MIN",
    "REQUEST_BASE",
    "RESPONSE_BASE",
    "STATUS_BASE",
    "STATUS_OK",
    "STATUS_OUT_OF_RANGE",
    "DriveState",
    "MotorDriveSim",
    "Reply",
    "StatusFrame",
    "bus_off_frame",
    "decode_reply",
    "decode_status_frame",
    "encode_get_speed",
    "encode_get_status",
    "encode_set_speed",
    "is_bus_off_frame",
    "request_id",
    "request_message",
    "response_id",
    "status_id",
]

logger = logging.getLogger(__name__)

REQUEST_BASE: Final = 0x600
"""Request id of node ``n`` is ``REQUEST_BASE + n`` (like the CANopen SDO client->server id)."""
RESPONSE_BASE: Final = 0x580
"""Response id of node ``n`` is ``RESPONSE_BASE + n`` (like the CANopen SDO server->client id)."""
STATUS_BASE: Final = 0x180
"""Status broadcast id of node ``n`` is ``STATUS_BASE + n`` (like CANopen TPDO1)."""

CMD_SET_SPEED: Final = 0x01
CMD_GET_SPEED: Final = 0x02
CMD_GET_STATUS: Final = 0x03
CMD_ERROR: Final = 0xFF
"""Command byte of the error reply to an unknown or malformed request."""

STATUS_OK: Final = 0x00
STATUS_OUT_OF_RANGE: Final = 0x01
ERR_UNKNOWN_COMMAND: Final = 0x01
ERR_MALFORMED: Final = 0x02

NODE_ID_MIN: Final = 1
NODE_ID_MAX: Final = 0x7F

_INT16 = struct.Struct("<h")
_STATUS_FRAME = struct.Struct("<BhhB")
_INT16_MIN, _INT16_MAX = -0x8000, 0x7FFF
_POLL_INTERVAL = 0.05  # longest recv() wait: bounds how late stop() is noticed
_SEND_TIMEOUT = 0.1  # never block the node forever on a full receiver queue
_AMBIENT_C = 25
_FULL_LOAD_RISE_C = 40  # temperature rise at max_rpm


class DriveState(IntEnum):
    """Drive state byte of GET_STATUS replies and status broadcasts."""

    STOPPED = 0
    """Setpoint and speed are both zero."""
    RAMPING = 1
    """The speed (as reported, whole rpm) is moving toward the setpoint."""
    AT_SPEED = 2
    """The speed (as reported, whole rpm) equals a non-zero setpoint."""


class Reply(NamedTuple):
    """A decoded reply frame; what ``status`` and ``value`` mean depends on ``command``.

    ``SET_SPEED``: status is STATUS_OK/STATUS_OUT_OF_RANGE, value the setpoint in force.
    ``GET_SPEED``: status 0, value the speed in rpm. ``GET_STATUS``: status is the
    :class:`DriveState`, value the temperature in degrees C. ``CMD_ERROR``: status is
    ERR_UNKNOWN_COMMAND/ERR_MALFORMED, value the offending command byte.
    """

    command: int
    status: int
    value: int


class StatusFrame(NamedTuple):
    """A decoded status broadcast; ``counter`` wraps at 256 so gaps show lost frames."""

    state: int
    speed: int
    setpoint: int
    counter: int


def _check_node_id(node_id: int) -> int:
    if not NODE_ID_MIN <= node_id <= NODE_ID_MAX:
        raise ValueError(f"node_id must be in {NODE_ID_MIN}..{NODE_ID_MAX}, got {node_id}")
    return node_id


def request_id(node_id: int) -> int:
    """CAN id a client sends requests to for ``node_id``."""
    return REQUEST_BASE + _check_node_id(node_id)


def response_id(node_id: int) -> int:
    """CAN id ``node_id`` sends its replies on."""
    return RESPONSE_BASE + _check_node_id(node_id)


def status_id(node_id: int) -> int:
    """CAN id ``node_id`` broadcasts its status on."""
    return STATUS_BASE + _check_node_id(node_id)


def encode_set_speed(rpm: int) -> bytes:
    """Request data for SET_SPEED; raises ``ValueError`` if ``rpm`` does not fit int16."""
    if not _INT16_MIN <= rpm <= _INT16_MAX:
        raise ValueError(f"rpm must fit a signed 16-bit integer, got {rpm}")
    return bytes([CMD_SET_SPEED]) + _INT16.pack(rpm)


def encode_get_speed() -> bytes:
    """Request data for GET_SPEED."""
    return bytes([CMD_GET_SPEED])


def encode_get_status() -> bytes:
    """Request data for GET_STATUS."""
    return bytes([CMD_GET_STATUS])


def request_message(data: bytes, node_id: int = 1) -> can.Message:
    """A request frame carrying ``data`` (from an ``encode_*`` function) to ``node_id``."""
    return can.Message(arbitration_id=request_id(node_id), is_extended_id=False, data=data)


def decode_reply(data: bytes | bytearray) -> Reply:
    """Decode reply data into ``Reply(command, status, value)``.

    Raises ``ValueError`` for data too short for its command or an unknown command byte,
    so a client treats a garbled reply as an error rather than a value.
    """
    raw = bytes(data)
    if not raw:
        raise ValueError("empty reply")
    command = raw[0]
    if command in (CMD_SET_SPEED, CMD_GET_SPEED):
        if len(raw) < 4:
            raise ValueError(f"reply to command {command:#04x} too short: {raw.hex()}")
        return Reply(command, raw[1], _INT16.unpack_from(raw, 2)[0])
    if command == CMD_GET_STATUS:
        if len(raw) < 3:
            raise ValueError(f"GET_STATUS reply too short: {raw.hex()}")
        return Reply(command, raw[1], struct.unpack_from("<b", raw, 2)[0])
    if command == CMD_ERROR:
        if len(raw) < 3:
            raise ValueError(f"error reply too short: {raw.hex()}")
        return Reply(command, raw[2], raw[1])
    raise ValueError(f"unknown reply command {command:#04x}")


def decode_status_frame(data: bytes | bytearray) -> StatusFrame:
    """Decode status broadcast data; raises ``ValueError`` if it is too short."""
    raw = bytes(data)
    if len(raw) < _STATUS_FRAME.size:
        raise ValueError(f"status frame too short: {raw.hex()}")
    return StatusFrame(*_STATUS_FRAME.unpack_from(raw))


def bus_off_frame() -> can.Message:
    """The error frame a node's bus-off is reported with, shaped as python-can's socketcan
    interface delivers one (standard id holding the error class, 8 data bytes)."""
    return can.Message(
        arbitration_id=CAN_ERR_BUSOFF, is_extended_id=False, is_error_frame=True, data=bytes(8)
    )


class MotorDriveSim:
    """A simulated motor drive answering the protocol above on its own python-can bus.

    It opens ``can.Bus(interface=interface, channel=channel, **bus_kwargs)`` in
    :meth:`start` and runs one background thread that answers requests and broadcasts
    status, so a client on the same channel talks to it as to a real node. Use it as a
    context manager, or call :meth:`start` and :meth:`stop`; both are idempotent and it
    can be started again after a stop (the drive keeps its setpoint and speed, like a
    node whose link was unplugged rather than one that was power-cycled).

    Fault controls (:meth:`bus_off`, :meth:`silence`, :meth:`set_response_delay`) are
    thread-safe and take effect when they return: no reply or status frame they
    suppress is sent afterwards.
    """

    def __init__(
        self,
        channel: str,
        *,
        node_id: int = 0x01,
        status_period: float | None = 0.1,
        interface: str = "virtual",
        max_rpm: int = 3000,
        ramp_rpm_per_s: float = 2000.0,
        **bus_kwargs: Any,
    ) -> None:
        """Configure the node; nothing touches the bus until :meth:`start`.

        ``status_period`` of 0 or ``None`` disables the status broadcast.
        ``ramp_rpm_per_s`` may be ``math.inf`` for a drive that jumps to its setpoint.
        """
        if not 0 < max_rpm <= _INT16_MAX:
            raise ValueError(f"max_rpm must be in 1..{_INT16_MAX}, got {max_rpm}")
        if not ramp_rpm_per_s > 0:
            raise ValueError(f"ramp_rpm_per_s must be > 0, got {ramp_rpm_per_s}")
        if status_period is not None and status_period < 0:
            raise ValueError(f"status_period must be >= 0 or None, got {status_period}")
        self._channel = channel
        self._node_id = _check_node_id(node_id)
        self._status_period = status_period or 0.0
        self._interface = interface
        self._bus_kwargs = bus_kwargs
        self._max_rpm = max_rpm
        self._ramp = float(ramp_rpm_per_s)

        # _lock guards the drive state, the flags and every transmission, so a control
        # call that returns has ordered itself against any frame the thread sends.
        self._lock = threading.Lock()
        self._lifecycle = threading.Lock()  # serialises start()/stop()
        self._speed = 0.0
        self._setpoint = 0
        self._last_update = time.monotonic()
        self._counter = 0
        self._bus_off = False
        self._silenced = False
        self._frozen = False
        self._parked = threading.Event()  # set while the node thread sits frozen
        self._response_delay = 0.0
        self._requests_handled = 0
        self._requests_dropped = 0
        self._status_sent = 0
        self._bus: can.BusABC | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> MotorDriveSim:
        """Open the bus and start the node thread; a no-op if already running.

        Returns ``self`` so ``sim = MotorDriveSim(...).start()`` reads naturally.
        Bus construction errors propagate to the caller.
        """
        with self._lifecycle:
            if self._thread is not None:
                return self
            bus = can.Bus(interface=self._interface, channel=self._channel, **self._bus_kwargs)
            with self._lock:
                self._bus = bus
            self._stop_event = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(bus, self._stop_event),
                name=f"sessions-sim-can-{self._channel}-{self._node_id:#04x}",
                daemon=True,
            )
            self._thread.start()
            return self

    def stop(self) -> None:
        """Stop and join the node thread, then shut its bus down; a no-op if not running.

        Delayed replies not yet sent are dropped, as if the node lost power.
        """
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stop_event.set()
            if thread is not threading.current_thread():
                thread.join()
            with self._lock:
                bus, self._bus = self._bus, None
            if bus is not None:
                bus.shutdown()
            self._thread = None

    def __enter__(self) -> MotorDriveSim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- fault controls ----------------------------------------------------------------

    def bus_off(self) -> None:
        """Take the node off the bus, as after too many transmit errors.

        Sends one bus-off error frame (if running; once per bus-off), then the node
        neither answers nor broadcasts until :meth:`recover`. Requests received meanwhile
        are dropped; the motor keeps ramping toward its setpoint.
        """
        with self._lock:
            if self._bus_off:
                return
            self._bus_off = True
            if self._bus is not None:
                self._send(self._bus, bus_off_frame())

    def recover(self) -> None:
        """Bring the node back on the bus after :meth:`bus_off`; it answers and broadcasts again."""
        with self._lock:
            self._bus_off = False

    def silence(self) -> None:
        """Stop answering requests while staying on the bus (status broadcasts continue).

        Requests received meanwhile are dropped without effect, so a client's request
        times out and nothing changed on the drive.
        """
        with self._lock:
            self._silenced = True

    def unsilence(self) -> None:
        """Answer requests again after :meth:`silence`."""
        with self._lock:
            self._silenced = False

    def freeze(self) -> None:
        """Hang the node: it stops reading its bus and sends nothing (no replies, no
        status broadcasts) until :meth:`thaw`.

        Frames sent to it meanwhile stay queued in its bus, unread: with a bounded
        ``rx_queue_size`` the queue fills up, and then every sender on the channel
        blocks for its send timeout and fails (``CanOperationError``). After
        :meth:`thaw` the node reads what was queued and answers it, late, like a node
        that was stuck rather than one that lost its messages. Returns once the node
        thread is parked (within about 50 ms): no frame sent afterwards is read before
        :meth:`thaw`.
        """
        with self._lock:
            self._frozen = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._parked.wait(1.0)  # bounded: a node thread that died never parks

    def thaw(self) -> None:
        """End a :meth:`freeze`: the node reads its bus and answers again."""
        with self._lock:
            self._frozen = False

    def set_response_delay(self, seconds: float) -> None:
        """Delay every later reply by ``seconds`` (0 for none), to test slow nodes.

        The request takes effect when received; only the reply is late. Status
        broadcasts are not delayed.
        """
        if not seconds >= 0:
            raise ValueError(f"response delay must be >= 0, got {seconds}")
        with self._lock:
            self._response_delay = float(seconds)

    # -- observation -------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The channel the node's bus is opened on."""
        return self._channel

    @property
    def node_id(self) -> int:
        """The node id its CAN ids are derived from."""
        return self._node_id

    @property
    def is_running(self) -> bool:
        """Whether the node thread is running (between :meth:`start` and :meth:`stop`)."""
        return self._thread is not None

    @property
    def is_bus_off(self) -> bool:
        """Whether the node is bus-off (see :meth:`bus_off`)."""
        return self._bus_off

    @property
    def is_silenced(self) -> bool:
        """Whether the node ignores requests (see :meth:`silence`)."""
        return self._silenced

    @property
    def is_frozen(self) -> bool:
        """Whether the node hangs (see :meth:`freeze`)."""
        return self._frozen

    @property
    def speed(self) -> int:
        """Current speed in rpm, ramped up to now."""
        with self._lock:
            self._advance()
            return round(self._speed)

    @property
    def setpoint(self) -> int:
        """Speed setpoint in rpm."""
        return self._setpoint

    @property
    def state(self) -> DriveState:
        """Current :class:`DriveState`."""
        with self._lock:
            self._advance()
            return self._state()

    @property
    def requests_handled(self) -> int:
        """Requests answered so far, error replies included."""
        return self._requests_handled

    @property
    def requests_dropped(self) -> int:
        """Requests ignored because the node was bus-off or silenced."""
        return self._requests_dropped

    @property
    def status_sent(self) -> int:
        """Status broadcasts sent so far."""
        return self._status_sent

    def __repr__(self) -> str:
        return (
            f"MotorDriveSim(channel={self._channel!r}, node_id={self._node_id:#04x}, "
            f"running={self.is_running}, bus_off={self._bus_off}, silenced={self._silenced}, "
            f"frozen={self._frozen})"
        )

    # -- node thread -------------------------------------------------------------------

    def _run(self, bus: can.BusABC, stop: threading.Event) -> None:
        """Receive loop: send due replies and status, else wait for a frame until the next
        deadline (at most ``_POLL_INTERVAL``, so it neither spins nor misses ``stop``)."""
        period = self._status_period
        next_status = time.monotonic() + period if period > 0 else math.inf
        pending: list[tuple[float, int, can.Message]] = []  # delayed replies, by due time
        order = itertools.count()
        while not stop.is_set():
            if self._frozen:  # hung: reads nothing, sends nothing
                self._parked.set()
                stop.wait(_POLL_INTERVAL)
                continue
            self._parked.clear()
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                self._transmit_reply(bus, heapq.heappop(pending)[2])
            if now >= next_status:
                self._broadcast_status(bus)
                next_status += period
                if next_status <= now:  # fell behind: skip missed slots, don't burst
                    next_status = now + period
            deadline = min(now + _POLL_INTERVAL, next_status)
            if pending:
                deadline = min(deadline, pending[0][0])
            try:
                msg = bus.recv(timeout=max(0.0, deadline - time.monotonic()))
            except can.CanError:
                logger.exception("%r: receive failed", self)
                stop.wait(_POLL_INTERVAL)
                continue
            if msg is None:
                continue
            try:
                reply = self._handle(msg)
            except Exception:  # the node must survive anything a frame can cause
                logger.exception("%r: failed to handle %s", self, msg)
                continue
            if reply is None:
                continue
            delay = self._response_delay
            if delay > 0:
                heapq.heappush(pending, (time.monotonic() + delay, next(order), reply))
            else:
                self._transmit_reply(bus, reply)

    def _handle(self, msg: can.Message) -> can.Message | None:
        """The reply to ``msg``, or ``None`` if it is not a request the node answers."""
        if (
            msg.is_error_frame
            or msg.is_remote_frame
            or msg.is_extended_id
            or msg.arbitration_id != REQUEST_BASE + self._node_id
        ):
            return None
        with self._lock:
            if self._bus_off or self._silenced:
                self._requests_dropped += 1
                return None
            data = self._process(bytes(msg.data))
            self._requests_handled += 1
        return can.Message(
            arbitration_id=RESPONSE_BASE + self._node_id, is_extended_id=False, data=data
        )

    def _process(self, request: bytes) -> bytes:
        """Execute one request and return the reply data. Caller holds ``_lock``."""
        if not request:
            return bytes([CMD_ERROR, 0x00, ERR_MALFORMED])
        command = request[0]
        self._advance()
        if command == CMD_SET_SPEED:
            if len(request) < 3:
                return bytes([CMD_ERROR, command, ERR_MALFORMED])
            rpm = _INT16.unpack_from(request, 1)[0]
            status = STATUS_OK
            if abs(rpm) > self._max_rpm:
                status = STATUS_OUT_OF_RANGE
            else:
                self._setpoint = rpm
            return bytes([command, status]) + _INT16.pack(self._setpoint)
        if command == CMD_GET_SPEED:
            return bytes([command, STATUS_OK]) + _INT16.pack(round(self._speed))
        if command == CMD_GET_STATUS:
            return bytes([command, self._state()]) + struct.pack("<b", self._temperature())
        return bytes([CMD_ERROR, command, ERR_UNKNOWN_COMMAND])

    def _transmit_reply(self, bus: can.BusABC, reply: can.Message) -> None:
        with self._lock:
            if not (self._bus_off or self._silenced or self._frozen):
                self._send(bus, reply)

    def _broadcast_status(self, bus: can.BusABC) -> None:
        with self._lock:
            if self._bus_off or self._frozen:
                return
            self._advance()
            data = _STATUS_FRAME.pack(
                self._state(), round(self._speed), self._setpoint, self._counter
            )
            msg = can.Message(
                arbitration_id=STATUS_BASE + self._node_id, is_extended_id=False, data=data
            )
            if self._send(bus, msg):
                self._status_sent += 1
                self._counter = (self._counter + 1) & 0xFF

    def _send(self, bus: can.BusABC, msg: can.Message) -> bool:
        """Send ``msg``; log and report ``False`` on failure instead of killing the node."""
        try:
            bus.send(msg, timeout=_SEND_TIMEOUT)
        except can.CanError:
            logger.warning("%r: could not send %s", self, msg, exc_info=True)
            return False
        return True

    # -- drive model (caller holds _lock) ------------------------------------------------

    def _advance(self) -> None:
        """Ramp the speed toward the setpoint for the time elapsed since the last call."""
        now = time.monotonic()
        elapsed, self._last_update = now - self._last_update, now
        diff = self._setpoint - self._speed
        if diff == 0:
            return
        step = abs(diff) if math.isinf(self._ramp) else self._ramp * elapsed
        if abs(diff) <= step:
            self._speed = float(self._setpoint)
        else:
            self._speed += math.copysign(step, diff)

    def _state(self) -> DriveState:
        # Judged on the reported (rounded) speed: a drive never reports the setpoint
        # as its speed while saying it is still ramping.
        if round(self._speed) != self._setpoint:
            return DriveState.RAMPING
        return DriveState.STOPPED if self._setpoint == 0 else DriveState.AT_SPEED

    def _temperature(self) -> int:
        """Winding temperature: ambient plus a rise proportional to speed (int8 range)."""
        return _AMBIENT_C + round(_FULL_LOAD_RISE_C * abs(self._speed) / self._max_rpm)
