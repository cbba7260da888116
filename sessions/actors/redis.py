"""The ``redis`` resource kind: a supervised redis-py client with automatic pipelining.

Each actor owns one Redis connection (``pool_size = N`` gives N actors, so N
connections, behind one handle). Every redis-py command is a method of the handle
(``cache.set("k", "v", ex=10)``, ``cache.hgetall("h")``, ...), returning a future of
plain data. When several commands are queued for one actor, it sends them as one
non-transactional pipeline, one round trip for all of them, and still gives every
caller its own result or its own error: that is **automatic pipelining**, and it is
why a handle shared by many threads outruns redis-py's own thread-safe pool.

The supervisor owns recovery, so redis-py is configured with **no retries of its
own** (``Retry(NoBackoff(), 0)``, no ``retry_on_error``, no ``retry_on_timeout``): a
command is sent at most once, and a broken connection becomes a fault that restarts
the actor (new connection, replayed subscriptions) while the calls queued behind it
wait. redis-py still silently replaces an idle connection that died (it checks the
socket when it checks a connection out, before sending anything), which is safe.

What is a fault, what goes to the caller
----------------------------------------

==============================================  ========================================
Error raised by redis-py                        Outcome
==============================================  ========================================
``ConnectionError``: refused, reset, closed     **fault**: the caller gets
by the server; ``BusyLoadingError`` (LOADING)   ``ResourceFault`` (cause: the error; the
                                                outcome is unknown) and the actor
                                                reconnects; queued calls wait for it
``TimeoutError``: no reply within               **fault**: a late reply would be read as
``socket_timeout``                              the answer to the next command
``InvalidResponse``: protocol error             **fault**
``PipelineBroken``: a batch failed while        **fault**: replies were left unread
reading replies, not for a connection reason
any of the above in an automatic pipeline       **fault** for every caller of the batch:
                                                all were sent, no outcome is known
``AuthenticationError``,                        the caller: the connection is fine and
``AuthorizationError``                          looping on bad credentials helps nobody
                                                (at connect: a failed start, retried)
``MaxConnectionsError`` (``transaction(fn)``    the caller
code checking out a second connection)
``ResponseError`` and subclasses (WRONGTYPE,    the caller; the connection goes on. In an
NOSCRIPT, READONLY, OOM, EXECABORT, ...),       automatic pipeline, only that command's
``DataError`` (bad arguments), ``WatchError``   caller
any other exception                             the caller
==============================================  ========================================

No unbounded wait on a dead peer
--------------------------------

Every wait is bounded by default: ``socket_timeout`` (5 s) for a reply,
``socket_connect_timeout`` (2 s) for a TCP connect, and TCP keepalive on for TCP
connections (``socket_keepalive = true``, probing after 10 s of silence, every 5 s, 3
probes: :data:`KEEPALIVE_DEFAULTS`), so an idle pub/sub connection to a host that vanished
is dropped in about 25 s instead of never (a pub/sub reader waits for messages, not
replies, so no socket timeout covers it). ``sessions check`` warns about a wait set to
unbounded. A frozen server (its kernel still acknowledges) is the runtime's stall
watchdog's job: :meth:`RedisActor.abort` shuts down, from another thread, the socket of
every connection of the aborted incarnation (commands and pub/sub), makes its pools
refuse new connections, and stops its pub/sub reader and delivery threads.

Methods
-------
* Every command of redis-py's ``CoreCommands`` family (strings, hashes, lists, sets,
  sorted sets, streams, geo, hyperloglog, scripting, functions, ACL, server and
  sentinel commands) under redis-py's name and signature, plus ``execute_command(*args)``
  for anything else. Excluded, with the reason in :data:`EXCLUDED`: methods returning
  live objects (``pipeline``, ``pubsub``, ``lock``, ``scan_iter``, ``bitfield``,
  ``register_script``, ...), commands that would break or silently reconfigure the
  connection (``quit``, ``reset``, ``select``, ``auth``, ``client_reply``,
  ``client_setname``, ...), and stubs redis-py does not implement.
* ``pipeline(fn, *args, transaction=False, watch=(), raise_on_error=True)``: ``fn(pipe)``
  queues commands; returns the list of replies.
* ``subscribe(channels, callback)``, ``psubscribe(patterns, callback)``,
  ``unsubscribe(channels=None)``, ``punsubscribe(patterns=None)``: pub/sub, replayed
  after every reconnect, delivered on threads named ``sessions-<name>-pubsub``.
* ``batch_stats()``: how many pipelines automatic pipelining sent, and how big.
* ``transaction(fn)`` (built in): ``fn(client)`` with the raw ``redis.Redis`` client, for
  anything else; nothing else runs on this actor meanwhile.

The in-process substitute
-------------------------

``url = "fakeredis://[NAME][/DB]"`` selects an in-process fake server (the ``fakeredis``
package, imported only for this scheme) instead of a real one, for tests: the resources
naming one NAME share one server (:func:`fake_server`), which outlives restarts as a
real server does. Only the connection class changes (fakeredis' subclass of redis-py's
``Connection``, on a socket-like object): the client, the automatic pipelining, pub/sub
and its replay, and the classification above are this module's, unchanged. Setting the
fake server's ``connected = False`` makes every call a ``ConnectionError`` fault and
every connect a failed start, as a server going down would.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import difflib
import functools
import importlib.util
import inspect
import logging
import socket
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, cast

import redis
import redis.client
import redis.connection
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails
from redis.backoff import NoBackoff
from redis.commands.core import CoreCommands
from redis.commands.sentinel import SentinelCommands
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    InvalidResponse,
    MaxConnectionsError,
)
from redis.retry import Retry

from sessions._config import ResourceConfig
from sessions._redact import describe
from sessions._runtime import substitutes
from sessions._runtime.abort import shutdown_socket
from sessions._runtime.contract import BatchItem, Outcome, ResourceActor
from sessions._runtime.fanout import Delivery

__all__ = [
    "COMMANDS",
    "EXCLUDED",
    "FAKE_SCHEME",
    "KEEPALIVE_DEFAULTS",
    "UNBATCHED",
    "PipelineBroken",
    "RedisActor",
    "RedisOptions",
    "fake_server",
]

log = logging.getLogger("sessions.redis")

Message = dict[str, Any]
"""A pub/sub message as redis-py parses it: ``type``, ``pattern``, ``channel``, ``data``."""

Callback = Callable[[Message], object]

# -- which redis-py methods become handle methods ---------------------------------------

_NOT_MATERIALIZED = "returns a live object bound to the connection; use {}"
_CONNECTION_STATE = (
    "changes state of this one connection that a reconnect (or another pool member) "
    "would not have; use {}"
)
_STUB = "not implemented by redis-py"

#: redis-py command methods a handle does not offer, and why.
EXCLUDED: Mapping[str, str] = {
    "bitfield": _NOT_MATERIALIZED.format("execute_command('BITFIELD', ...) or bitfield_ro"),
    "register_script": _NOT_MATERIALIZED.format("eval/evalsha (or script_load + evalsha)"),
    "scan_iter": _NOT_MATERIALIZED.format("scan(cursor, ...) in a loop"),
    "sscan_iter": _NOT_MATERIALIZED.format("sscan(name, cursor, ...) in a loop"),
    "hscan_iter": _NOT_MATERIALIZED.format("hscan(name, cursor, ...) in a loop"),
    "zscan_iter": _NOT_MATERIALIZED.format("zscan(name, cursor, ...) in a loop"),
    "bless_scan_iter": _NOT_MATERIALIZED.format("bless_scan(cursor, flag, ...) in a loop"),
    "quit": "closes the connection (the actor would fault); stop the resource instead",
    "reset": _CONNECTION_STATE.format("the url and options"),
    "shutdown": "stops the server; use transaction(lambda r: r.shutdown()) if you mean it",
    "client_reply": "OFF/SKIP would desynchronize replies from commands",
    "sync": "turns the connection into a replication stream",
    "psync": "turns the connection into a replication stream",
    "select": _CONNECTION_STATE.format("the db in the url (redis://host/DB)"),
    "auth": _CONNECTION_STATE.format("the password/username in the url or options"),
    "client_setname": _CONNECTION_STATE.format("the client_name option"),
    "client_setinfo": _CONNECTION_STATE.format("the driver_info option"),
    "client_tracking": _CONNECTION_STATE.format("transaction(fn)"),
    "client_tracking_on": _CONNECTION_STATE.format("transaction(fn)"),
    "client_tracking_off": _CONNECTION_STATE.format("transaction(fn)"),
    "client_no_evict": _CONNECTION_STATE.format("transaction(fn)"),
    "client_no_touch": _CONNECTION_STATE.format("transaction(fn)"),
    "readonly": _CONNECTION_STATE.format("transaction(fn)"),
    "readwrite": _CONNECTION_STATE.format("transaction(fn)"),
    "watch": "use pipeline(fn, transaction=True, watch=[...])",
    "unwatch": "use pipeline(fn, transaction=True, watch=[...])",
    "sentinel": "deprecated by redis-py; use the sentinel_* methods",
    "digest_local": "computed locally, no server involved; call redis-py directly",
    "command_docs": _STUB,
    "command_info": _STUB,
    "debug_segfault": _STUB,
    "failover": _STUB,
    "hello": _STUB,
    "latency_doctor": _STUB,
    "latency_graph": _STUB,
    "latency_histogram": _STUB,
    "memory_doctor": _STUB,
    "memory_help": _STUB,
    "script_debug": _STUB,
}

#: First words of raw commands ``execute_command`` refuses: they change the state of the
#: connection (or turn it into a stream) behind the back of every other caller.
_STATEFUL_COMMANDS = frozenset(
    {
        "AUTH",
        "DISCARD",
        "EXEC",
        "HELLO",
        "MONITOR",
        "MULTI",
        "PSUBSCRIBE",
        "PSYNC",
        "PUNSUBSCRIBE",
        "QUIT",
        "REPLCONF",
        "RESET",
        "SELECT",
        "SSUBSCRIBE",
        "SUBSCRIBE",
        "SUNSUBSCRIBE",
        "SYNC",
        "UNSUBSCRIBE",
        "UNWATCH",
        "WATCH",
    }
)
_STATEFUL_CLIENT_COMMANDS = frozenset(
    {"NO-EVICT", "NO-TOUCH", "REPLY", "SETINFO", "SETNAME", "TRACKING"}
)


def _check_raw(args: tuple[Any, ...]) -> None:
    """Refuse a raw command that would reconfigure the shared connection."""
    words: list[str] = []
    for arg in args[:2]:
        text = arg.decode("latin-1") if isinstance(arg, bytes) else arg
        if not isinstance(text, str):
            break
        words += text.upper().split()
    if not words:
        raise ValueError("execute_command() needs the command name as its first argument")
    if words[0] in _STATEFUL_COMMANDS or (
        words[0] == "CLIENT" and len(words) > 1 and words[1] in _STATEFUL_CLIENT_COMMANDS
    ):
        raise ValueError(
            f"execute_command({' '.join(words[:2])!r}, ...) would change the state of this "
            "connection for every caller (and be lost on reconnect); use the url/options, "
            "pipeline(fn, transaction=True, watch=...) or subscribe() instead"
        )


#: Commands that run alone rather than in an automatic pipeline: their redis-py method
#: does more with the reply than return it (so on a pipeline object it would misbehave).
UNBATCHED: frozenset[str] = frozenset({"xread", "xreadgroup"})

_COMMAND_CLASSES: tuple[type, ...] = tuple(
    cls
    for cls in redis.Redis.__mro__
    if cls.__module__ == CoreCommands.__module__ or cls is SentinelCommands
)


def _command_names() -> tuple[str, ...]:
    names = {
        name
        for cls in _COMMAND_CLASSES
        for name, value in vars(cls).items()
        if not name.startswith("_") and callable(value)
    }
    names -= set(EXCLUDED)
    names = {n for n in names if not n.startswith("himport")}  # experimental, client-side
    names.add("execute_command")
    return tuple(sorted(names))


#: Every redis-py method a ``redis`` handle offers (each calls the client's method).
COMMANDS: tuple[str, ...] = _command_names()

# -- options ----------------------------------------------------------------------------

#: Keys the supervisor (or this kind) owns: passing them is a config error.
_FORBIDDEN: Mapping[str, str] = {
    "retry": "the supervisor owns retrying (restart with backoff); redis-py gets none",
    "retry_on_error": "the supervisor owns retrying (restart with backoff); redis-py gets none",
    "retry_on_timeout": "the supervisor owns retrying (restart with backoff); redis-py gets none",
    "max_connections": "each actor has exactly one connection; use pool_size for more",
    "single_connection_client": "each actor has exactly one connection already",
    "connection_pool": "each actor builds its own one-connection pool",
    "connection_class": "chosen by the url scheme (redis://, rediss://, unix://)",
}


def _passthrough_names() -> frozenset[str]:
    conn = redis.connection
    classes = [
        getattr(conn, n, None)
        for n in ("AbstractConnection", "Connection", "SSLConnection", "UnixDomainSocketConnection")
    ]
    names: set[str] = set()
    for cls in classes:
        if cls is None:
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(names - {"self"} - set(_FORBIDDEN))


_PASSTHROUGH = _passthrough_names()


def _keepalive_defaults() -> dict[int, int]:
    names = (
        ("TCP_KEEPIDLE", 10),  # Linux; macOS calls it TCP_KEEPALIVE
        ("TCP_KEEPALIVE", 10),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3),
    )
    options: dict[int, int] = {}
    for name, value in names:
        constant = getattr(socket, name, None)
        if isinstance(constant, int) and (name != "TCP_KEEPALIVE" or not options):
            options[constant] = value
    return options


KEEPALIVE_DEFAULTS: Mapping[int, int] = _keepalive_defaults()
"""``socket_keepalive_options`` of a TCP connection unless configured: first probe after
10 s of silence, then every 5 s, dropped after 3 unanswered probes (about 25 s), so an
idle pub/sub connection to a host that vanished is noticed (redis-py 8's own default
is 30/5/3; older redis-py left keepalive off). Options the platform lacks are skipped."""


def _keepalive_options(value: Any) -> Any:
    """``socket_keepalive_options`` with option names (a TOML table's keys are strings:
    ``{ TCP_KEEPIDLE = 30 }``) or digit strings turned into the socket constants."""
    if not isinstance(value, Mapping):
        return value
    options: dict[int, Any] = {}
    for key, item in value.items():
        constant: Any = key
        if isinstance(key, str):
            constant = int(key) if key.isdigit() else getattr(socket, key.upper(), None)
        if not isinstance(constant, int) or isinstance(constant, bool):
            raise ValueError(
                f"unknown TCP option {key!r} on this platform "
                "(use names like TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)"
            )
        options[constant] = item
    return options


def _tcp_url(url: str) -> bool:
    """A redis:// or rediss:// url (TCP); unix:// has no keepalive options."""
    return url.split(":", 1)[0].lower() in ("redis", "rediss")


FAKE_SCHEME = "fakeredis"
"""The url scheme of the in-process substitute: ``fakeredis://[NAME][/DB]``."""


def _fake_url(url: str) -> bool:
    return url.split(":", 1)[0].lower() == FAKE_SCHEME


def _parse_fake_url(url: str) -> tuple[str, int]:
    """``(server name, db)`` of a ``fakeredis://[NAME][/DB]`` url (ValueError if not one)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.strip("/")
    if parts.query or parts.fragment or parts.username or parts.password or parts.port:
        raise ValueError(
            f"{url!r}: a fakeredis url is fakeredis://[NAME][/DB] (NAME: the fake server to "
            "share, DB: a database number); pass options as keys of the resource instead"
        )
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the database after the name must be a number, got {path!r}")
    return parts.netloc, int(path or 0)


def fake_server(name: str = "") -> Any:
    """The in-process fake Redis server ``name`` (a ``fakeredis.FakeServer``) that the
    resources with ``url = "fakeredis://NAME"`` connect to, made on first use.

    A test can look at it or make it fail as a real server would: ``connected = False``
    refuses connections and breaks the open ones (a fault, then failed starts until it
    is set back to True)."""
    try:
        import fakeredis  # noqa: PLC0415 - only the fakeredis:// scheme needs it
    except ImportError as err:
        raise ImportError(
            "fakeredis:// urls need the fakeredis package: "
            "pip install 'applib-sessions[testing]'"
        ) from err
    return substitutes.peer(FAKE_SCHEME, name, fakeredis.FakeServer)


def _key_problem(key: str, value: Any) -> tuple[str, Any]:
    """``(problem, value)`` for one key that is not a field of :class:`RedisOptions`:
    the problem is "" for a redis-py connection option (``value`` converted if needed)."""
    if key in _FORBIDDEN:
        return f"not allowed: {_FORBIDDEN[key]}", value
    if key not in _PASSTHROUGH:
        close = difflib.get_close_matches(
            key, sorted(_PASSTHROUGH | set(ResourceConfig.model_fields)), n=1
        )
        hint = f"did you mean {close[0]}? " if close else ""
        return (
            f"unknown redis-py connection option {key!r} ({hint}TLS: use a rediss:// url; "
            "a socket: unix://)",
            value,
        )
    if key == "socket_keepalive_options":
        try:
            return "", _keepalive_options(value)
        except ValueError as err:
            return str(err), value
    return "", value


def _value_error(key: str, value: Any, problem: str) -> InitErrorDetails:
    """A pydantic line error at ``key``, as a ValueError raised by a field validator
    gives (the config loader reports its message as it is)."""
    return InitErrorDetails(
        type="value_error", loc=(key,), input=value, ctx={"error": ValueError(problem)}
    )


class RedisOptions(BaseModel):
    """The keys of a ``redis`` resource (constructor keywords of :class:`RedisActor`).

    Any other key is passed to redis-py's connection (``decode_responses``,
    ``password``, ``username``, ``db``, ``ssl_*``, ``protocol``, ``health_check_interval``,
    ``socket_keepalive``, ...); an unknown one, or one the supervisor owns (``retry``,
    ``max_connections``, ...), is a config error at its own path. A TCP url gets TCP
    keepalive unless configured (``socket_keepalive = true`` and
    :data:`KEEPALIVE_DEFAULTS`, both then in ``model_extra``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    url: str = Field(
        description="redis://[[user]:[password]@]host[:port][/db], rediss:// for TLS, "
        "unix:///path/to.sock?db=N. Query-string options win over other keys. "
        "fakeredis://[NAME][/DB]: the in-process fake Redis server NAME (tests; needs "
        "the fakeredis package)."
    )
    client_name: str | None = Field(
        None, description="Sent with CLIENT SETNAME on every (re)connect; shows in CLIENT LIST."
    )
    socket_timeout: float | None = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds to wait for a reply before the connection counts as broken "
        "(a fault). Keep it at most the resource's call_timeout, and above the block time "
        "of blocking commands (BLPOP, XREAD BLOCK, ...). None waits forever "
        "(sessions check warns).",
    )
    socket_connect_timeout: float | None = Field(
        2.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds one TCP connect may take (a failed start after it). None: "
        "socket_timeout.",
    )
    pubsub_queue_size: int = Field(
        10_000,
        ge=1,
        description="Pub/sub messages buffered per callback; when a callback is that far "
        "behind, its oldest message is dropped (counted, logged), never another's.",
    )

    @field_validator("url")
    @classmethod
    def _non_empty_url(cls, url: str) -> str:
        if not url:
            raise ValueError(
                "url must be a non-empty redis://, rediss://, unix:// or fakeredis:// url"
            )
        if _fake_url(url):
            _parse_fake_url(url)
            if importlib.util.find_spec("fakeredis") is None:
                raise ValueError(
                    "a fakeredis:// url selects the in-process fake Redis, which needs the "
                    "fakeredis package: pip install 'applib-sessions[testing]'"
                )
        return url

    @model_validator(mode="wrap")
    @classmethod
    def _redis_py_keys(
        cls, data: Any, handler: ModelWrapValidatorHandler[RedisOptions]
    ) -> RedisOptions:
        """Check every other key against redis-py's connection options (turning the TCP
        option names of ``socket_keepalive_options`` into constants), add the TCP
        keepalive defaults, and report every problem at its own key, together with the
        fields' own."""
        problems: list[InitErrorDetails] = []
        if isinstance(data, Mapping):
            data = dict(data)
            for key in [k for k in data if k not in cls.model_fields]:
                problem, data[key] = _key_problem(str(key), data[key])
                if problem:
                    problems.append(_value_error(str(key), data[key], problem))
            if isinstance(data.get("url"), str) and _tcp_url(data["url"]):
                data.setdefault("socket_keepalive", True)
                data.setdefault("socket_keepalive_options", dict(KEEPALIVE_DEFAULTS))
        try:
            options = handler(data)
        except ValidationError as err:
            if not problems:
                raise
            problems = [_line_error(e) for e in err.errors()] + problems
            raise ValidationError.from_exception_data(cls.__name__, problems) from None
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return options

    def unbounded_waits(self) -> list[tuple[str, str]]:
        """``(config path, message)`` per wait set to unbounded (``sessions check``).
        Options in the url's query string win, as in redis-py."""
        effective = {**self.model_dump(), **(self.model_extra or {})}
        # a bad url is reported at connect
        with contextlib.suppress(Exception):
            effective.update(redis.connection.parse_url(self.url))  # type: ignore[no-untyped-call]
        fields = type(self).model_fields
        problems: list[tuple[str, str]] = []
        timeout = effective.get("socket_timeout")
        if timeout is None:
            problems.append(
                (
                    "socket_timeout",
                    "= None is unbounded: a reply is waited for forever, so a frozen server or "
                    "a dead host wedges the resource until the stall watchdog aborts it "
                    f"(default: {fields['socket_timeout'].default})",
                )
            )
        if effective.get("socket_connect_timeout") is None and timeout is None:
            # redis-py: None -> socket_timeout
            problems.append(
                (
                    "socket_connect_timeout",
                    "= None (and socket_timeout = None) is unbounded: a TCP connect to a "
                    "black-holed host is waited for until the kernel gives up, about 2 "
                    f"minutes (default: {fields['socket_connect_timeout'].default})",
                )
            )
        if _tcp_url(self.url) and effective.get("socket_keepalive") is False:
            problems.append(
                (
                    "socket_keepalive",
                    "= false is unbounded: an idle connection (a pub/sub subscription) to a "
                    "host that vanished is never noticed, subscribers wait for messages "
                    "forever (default: true)",
                )
            )
        return problems


def _line_error(error: ErrorDetails) -> InitErrorDetails:
    """A reported pydantic error as a line error to raise again (with others)."""
    line = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
    if "ctx" in error:
        line["ctx"] = error["ctx"]
    return line


class _AbortablePool(redis.ConnectionPool):
    """A connection pool whose connections :meth:`abort` can shut down from any thread.

    It keeps (weakly) every connection it makes and the socket each one connected with:
    a connection in use is not in the pool's idle list, so tracking them as they are made
    is the only way to reach the one a blocked command reads. Each connection's
    ``_connect`` (where every redis-py connect and reconnect path opens its socket) is
    wrapped: after an abort it refuses to connect, and a socket that finished connecting
    just after the abort is shut down before its handshake can block. Nothing the aborted
    incarnation does afterwards reaches the server again: the pool hands out no
    connection, and a pub/sub reader's own reconnect attempt fails at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._abort_lock = threading.Lock()
        self._sockets: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.aborted = False

    def make_connection(self) -> Any:
        connection = super().make_connection()
        inner: Any = getattr(connection, "_conn", connection)  # CacheProxyConnection wraps one
        opener = getattr(inner, "_connect", None)
        with self._abort_lock:
            if self.aborted:
                raise redis.ConnectionError("the connection was aborted")
            self._sockets[inner] = None
        if callable(opener):
            inner._connect = functools.partial(self._open, inner, opener)
        return connection

    def _open(self, connection: Any, opener: Callable[[], Any]) -> Any:
        if self.aborted:  # an OSError: redis-py turns it into its ConnectionError
            raise OSError("the connection was aborted")
        sock = opener()
        with self._abort_lock:
            self._sockets[connection] = sock
            if self.aborted:
                shutdown_socket(sock)
        return sock

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.aborted:
            raise redis.ConnectionError("the connection was aborted")
        return super().get_connection(*args, **kwargs)

    def abort(self) -> None:
        """Shut down the socket of every connection made; never blocks, never raises.
        A TCP connect in progress is bounded by ``socket_connect_timeout``; its socket is
        shut down as soon as it connects."""
        with self._abort_lock:
            self.aborted = True
            for connection, sock in list(self._sockets.items()):
                shutdown_socket(sock or getattr(connection, "_sock", None))


class PipelineBroken(redis.ConnectionError):
    """A batch failed while its replies were being read, for a reason other than the
    connection itself: replies are left unread, so the connection cannot be reused."""


# -- pub/sub ----------------------------------------------------------------------------

_POLL = 0.05
"""How often the pub/sub reader looks at its control queue when no message arrives."""

_JOIN_TIMEOUT = 2.0
"""How long a disconnect waits for delivery threads to hand out what they hold."""


class _Control:
    """A subscription change for the reader thread, resolved once Redis confirmed it."""

    __slots__ = ("callback", "future", "kind", "names", "remaining")

    def __init__(self, kind: str, names: list[bytes], callback: Callback | None) -> None:
        self.kind = kind
        self.names = names
        self.callback = callback
        self.remaining = len(names)
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


class _Listener:
    """The pub/sub side of one incarnation: its own connection, read by one thread.

    The reader thread belongs to the incarnation (``context.spawn``: the runtime joins it
    after ``disconnect()``, and an error escaping it is a fault of that connection, never
    of a later one). It owns the ``PubSub`` object (redis-py's is not thread-safe) and
    closes it as it ends: the actor asks for subscription changes through a queue and
    waits for Redis to confirm them. Messages go to one
    :class:`~sessions._runtime.fanout.Delivery` per callback (bounded, drop-oldest, a
    thread each), closed and joined when the listener closes. A broken connection is a
    fault of the resource, whose replay step then subscribes again on the next one.
    """

    def __init__(self, actor: RedisActor, owner: redis.Redis) -> None:
        self._actor = actor
        self.owner = owner  # the command client of this incarnation
        self._pool = actor._pool()
        client = redis.Redis(connection_pool=self._pool)
        # redis-py < 8.2 leaves pubsub() untyped; 8.2 types it and its encoder as Optional.
        self._pubsub: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
        encoder = self._pubsub.encoder
        assert encoder is not None  # PubSub() always makes one from the pool's options
        self._encode: Callable[[Any], bytes] = encoder.encode
        self._controls: deque[_Control] = deque()
        self._lock = threading.Lock()
        self._callbacks: dict[tuple[str, bytes], Callback] = {}
        self._deliveries: dict[Callback, Delivery[Message]] = {}
        """Written by the reader under ``_lock``, never once ``_stop`` is set."""
        self._awaiting: dict[tuple[str, bytes], deque[_Control]] = {}
        self._stop = threading.Event()
        """Set to end the reader (close, abort), and by the reader as it ends."""
        self._thread = actor.context.spawn(self._read, f"sessions-{actor.name}-pubsub-reader")

    def request(
        self, kind: str, names: list[bytes], callback: Callback | None = None
    ) -> concurrent.futures.Future[None]:
        """Queue a subscribe/psubscribe/unsubscribe/punsubscribe for the reader."""
        control = _Control(kind, names, callback)
        with self._lock:
            if self._stop.is_set() or not self._thread.is_alive():
                control.future.set_exception(
                    redis.ConnectionError("the pub/sub connection is closed")
                )
                return control.future
            self._controls.append(control)
        return control.future

    def abort(self) -> None:
        """From any thread, without blocking: stop reading, shut the pub/sub socket down
        (a reader blocked on it wakes), and let delivery threads end once they have
        handed out what they hold. The reader fails pending subscription requests as it
        ends, so an actor waiting for a confirmation returns at once."""
        for delivery in self._stop_reading():
            delivery.close()

    def close(self) -> None:
        """Stop reading (the reader closes the connection as it ends; the runtime joins
        it), and let delivery threads hand out what they hold (bounded wait)."""
        deliveries = self._stop_reading()
        for delivery in deliveries:
            delivery.close()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for delivery in deliveries:
            if not delivery.join(max(0.0, deadline - time.monotonic())):
                log.error(
                    "pub/sub callback %r of %r is still running after %.1fs; its "
                    "thread is abandoned",
                    delivery.callback,
                    self._actor.name,
                    _JOIN_TIMEOUT,
                )

    def _stop_reading(self) -> list[Delivery[Message]]:
        """End the reader now (a read in progress fails at once: the socket is shut
        down, and the pool refuses to reconnect); the deliveries, none made after."""
        self._stop.set()
        self._pool.abort()
        with self._lock:
            return list(self._deliveries.values())

    # -- reader thread ------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply_controls()
                message = self._pubsub.get_message(timeout=_POLL)
                if message is not None:
                    self._handle(message)
        except Exception as exc:
            if self._stop.is_set():  # closed or aborted under it: not a fault
                return
            self._fail_pending(exc)
            log.warning(
                "pub/sub connection of %r broke: %s", self._actor.name, describe(exc)
            )
            raise  # context.spawn reports it as a fault of this incarnation's connection
        finally:
            # Ended: later requests fail at once, and whoever waits for a confirmation
            # learns it now.
            self._stop.set()
            self._fail_pending(redis.ConnectionError("the pub/sub connection was closed"))
            with contextlib.suppress(Exception):
                self._pubsub.close()
            with contextlib.suppress(Exception):
                self._pool.disconnect()

    def _apply_controls(self) -> None:
        while True:
            with self._lock:
                if not self._controls:
                    return
                control = self._controls.popleft()
            kind, names = control.kind, control.names
            sub_kind = "channel" if kind in ("subscribe", "unsubscribe") else "pattern"
            if kind.endswith("unsubscribe"):
                known = [n for n in names if (sub_kind, n) in self._callbacks]
                for name in known:
                    del self._callbacks[(sub_kind, name)]
                control.names = names = known  # Redis confirms only what was subscribed
                control.remaining = len(names)
            else:
                assert control.callback is not None
                callback = control.callback
                with self._lock:  # close() and abort() read the deliveries elsewhere
                    if self._stop.is_set():  # closing: the request fails as we end
                        self._controls.appendleft(control)
                        return
                    if callback not in self._deliveries:
                        self._deliveries[callback] = Delivery(
                            callback,
                            capacity=self._actor.config.pubsub_queue_size,
                            name=f"sessions-{self._actor.name}-pubsub",
                            what=f"pub/sub callback {callback!r}",
                        )
                for name in names:
                    self._callbacks[(sub_kind, name)] = callback
            if not names:
                control.future.set_result(None)
                continue
            for name in names:
                self._awaiting.setdefault((kind, name), deque()).append(control)
            getattr(self._pubsub, kind)(*names)

    def _handle(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("message", "pmessage"):
            if kind == "message":
                key = ("channel", self._encode(message["channel"]))
            else:
                key = ("pattern", self._encode(message["pattern"]))
            callback = self._callbacks.get(key)
            if callback is not None:
                self._deliveries[callback].put(message)
            return
        waiting = self._awaiting.get((kind, self._encode(message["channel"] or b"")))
        if waiting:
            control = waiting.popleft()
            control.remaining -= 1
            if control.remaining == 0 and not control.future.done():
                control.future.set_result(None)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            pending = list(self._controls)
            self._controls.clear()
        for waiting in self._awaiting.values():
            pending.extend(waiting)
        self._awaiting.clear()
        for control in pending:
            if not control.future.done():
                control.future.set_exception(exc)


# -- the actor --------------------------------------------------------------------------


class RedisActor(ResourceActor):
    """One Redis connection, owned by one actor thread (see the module docstring).

    A lease (``with cache.lease() as r``, ``async with registry.redis as r``) holds one
    actor, so one connection: the block's commands run on it in the order made, with no
    other caller's command in between (consecutive ones may still share a pipeline). It
    is not a Redis transaction: each command takes effect when it runs and nothing is
    undone if the block raises; for MULTI/EXEC (and WATCH) use
    ``pipeline(fn, transaction=True)``.
    """

    kind: ClassVar[str] = "redis"
    fault_types: ClassVar[tuple[type[BaseException], ...]] = (
        redis.ConnectionError,
        redis.TimeoutError,
        InvalidResponse,
    )
    Options = RedisOptions

    #: Errors that are ConnectionError subclasses but leave the connection healthy.
    caller_errors: ClassVar[tuple[type[BaseException], ...]] = (
        AuthenticationError,
        AuthorizationError,
        MaxConnectionsError,
    )

    batch_methods: ClassVar[frozenset[str]] = frozenset(set(COMMANDS) - UNBATCHED)

    config: RedisOptions

    def __init__(self, **options: Any) -> None:
        """``options``: the keys of :class:`RedisOptions` and redis-py connection options
        (ValueError naming every bad key). No I/O: ``connect()`` does it."""
        super().__init__(**options)
        self._subs: dict[tuple[str, bytes], Callback] = {}
        """(channel|pattern, name) -> callback; survives restarts (replayed)."""
        self._listeners: dict[int, _Listener] = {}
        """id(command client) -> the pub/sub listener of that incarnation."""
        self._abort_lock = threading.Lock()
        self._connecting: list[_AbortablePool] = []
        """Pools of connect() calls that have not returned (what abort(None) tears down)."""
        self._batches = 0
        self._batched_calls = 0
        self._largest_batch = 0

    def _connection_kwargs(self) -> dict[str, Any]:
        """redis-py connection keywords: one connection, no retries, bounded waits."""
        config = self.config
        return {
            **(config.model_extra or {}),
            "client_name": config.client_name,
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.socket_connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_error": [],
            "max_connections": 1,
        }

    def _pool(self) -> _AbortablePool:
        """A one-connection pool on the configured url: a real server's, or for
        ``fakeredis://`` the named in-process fake's (fakeredis' connection class, a
        subclass of redis-py's: the same client, pipelines, parser and errors)."""
        if not _fake_url(self.config.url):
            return _AbortablePool.from_url(self.config.url, **self._connection_kwargs())
        name, db = _parse_fake_url(self.config.url)
        server = fake_server(name)
        from fakeredis import FakeRedisConnection  # noqa: PLC0415 - see fake_server()

        return _AbortablePool(
            connection_class=FakeRedisConnection, server=server, db=db,
            **self._connection_kwargs(),
        )

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self) -> redis.Redis:
        """A client on a one-connection pool, connected (PING) before it serves calls."""
        pool = self._pool()
        client = redis.Redis(connection_pool=pool)
        with self._abort_lock:
            self._connecting.append(pool)
        try:
            client.ping()
        except BaseException:
            pool.disconnect()
            raise
        finally:
            with self._abort_lock:
                self._connecting.remove(pool)
        return client

    def disconnect(self, resource: redis.Redis) -> None:
        listener = self._listeners.pop(id(resource), None)
        try:
            if listener is not None and listener.owner is resource:
                listener.close()
        finally:
            resource.close()
            resource.connection_pool.disconnect()

    def abort(self, resource: redis.Redis | None) -> None:
        """Make a command blocked on ``resource`` return now (from another thread).

        Shuts down the socket of the incarnation's command connection and of its pub/sub
        connection (a blocked read raises ``redis.ConnectionError``), makes their pools
        refuse new connections, stops the pub/sub reader (it fails pending subscription
        requests as it ends) and lets the delivery threads end. ``resource=None`` aborts
        a pending ``connect()``. Non-blocking, idempotent, never raises.
        """
        if resource is None:
            with self._abort_lock:
                pools = list(self._connecting)
            for pending in pools:
                pending.abort()
            return
        pool = getattr(resource, "connection_pool", None)
        if isinstance(pool, _AbortablePool):
            pool.abort()
        listener = self._listeners.get(id(resource))
        if listener is not None and listener.owner is resource:
            listener.abort()

    def is_fault(self, exc: BaseException) -> bool:
        """Connection and timeout errors (except credential and pool-size errors), and
        protocol errors: the connection cannot be trusted any more."""
        return isinstance(exc, self.fault_types) and not isinstance(exc, self.caller_errors)

    def health_check(self) -> None:
        """PING (when ``health_interval`` is configured)."""
        self.resource.ping()

    # -- automatic pipelining -----------------------------------------------------------

    def run_batch(self, calls: Sequence[BatchItem]) -> list[Outcome]:
        """Queued commands as one non-transactional pipeline, one outcome per caller.

        A command that fails client-side (bad arguments) fails alone and is not sent; a
        Redis error reply goes to its own caller; a connection error fails the whole batch
        (every command was sent, so every outcome is unknown).
        """
        pipe = self.resource.pipeline(transaction=False)
        stack: list[Any] = pipe.command_stack
        outcomes: list[Outcome | None] = [None] * len(calls)
        sent: list[int] = []  # index in calls of each queued command
        for i, (method, args, kwargs) in enumerate(calls):
            depth = len(stack)
            try:
                if method == "execute_command":
                    _check_raw(args)
                getattr(pipe, method)(*args, **kwargs)
            except Exception as exc:
                del stack[depth:]
                outcomes[i] = (False, exc)
                continue
            if len(stack) != depth + 1:  # guarded by a test over every batched command
                del stack[depth:]
                outcomes[i] = (
                    False,
                    RuntimeError(
                        f"{method}() cannot be pipelined automatically (a bug in sessions' "
                        "redis kind: please report it); use transaction(fn) meanwhile"
                    ),
                )
                continue
            sent.append(i)
        if not sent:
            pipe.reset()
            return [o for o in outcomes if o is not None]
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.DataError:
            # An argument redis-py cannot encode: raised while packing, before anything
            # was sent. Run the commands one by one so only the bad one fails.
            one_by_one = super().run_batch([calls[i] for i in sent])
            for i, outcome in zip(sent, one_by_one, strict=True):
                outcomes[i] = outcome
        except Exception as exc:
            error: BaseException = exc
            if not self.is_fault(exc):
                error = PipelineBroken(
                    f"a pipeline of {len(sent)} commands failed while reading replies: "
                    f"{describe(exc)}"
                )
                error.__cause__ = exc
            for i in sent:
                outcomes[i] = (False, error)
        else:
            for i, reply in zip(sent, replies, strict=True):
                outcomes[i] = (False, reply) if isinstance(reply, Exception) else (True, reply)
            self._batches += 1
            self._batched_calls += len(sent)
            self._largest_batch = max(self._largest_batch, len(sent))
        return cast("list[Outcome]", outcomes)  # every slot is filled by now

    def batch_stats(self) -> dict[str, int]:
        """Automatic pipelining so far (this actor; survives restarts): ``batches`` sent
        as one pipeline, ``calls`` they carried, ``largest`` batch."""
        return {
            "batches": self._batches,
            "calls": self._batched_calls,
            "largest": self._largest_batch,
        }

    # -- explicit pipelines -------------------------------------------------------------

    def pipeline(
        self,
        fn: Callable[..., object],
        *args: Any,
        transaction: bool = False,
        watch: Iterable[str | bytes] = (),
        raise_on_error: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """``fn(pipe, *args, **kwargs)`` queues commands on a redis-py pipeline; they
        are sent at once and the list of replies is returned.

        ``transaction=True`` wraps them in MULTI/EXEC. With ``watch`` keys the pipeline
        starts in immediate mode after WATCH (``fn`` may read), and ``fn`` must call
        ``pipe.multi()`` before queueing; a concurrent change raises ``WatchError`` to
        the caller (retry if you like). ``raise_on_error=False`` puts error replies in
        the list instead of raising the first. ``pipe`` is valid during ``fn`` only.
        """
        with self.resource.pipeline(transaction=transaction) as pipe:
            keys = list(watch)
            if keys:
                pipe.watch(*keys)
            fn(pipe, *args, **kwargs)
            return list(pipe.execute(raise_on_error=raise_on_error))

    # -- pub/sub ------------------------------------------------------------------------

    def subscribe(self, channels: str | bytes | Iterable[str | bytes], callback: Callback) -> None:
        """Deliver messages on ``channels`` to ``callback(message)``, on a thread named
        ``sessions-<name>-pubsub``; resolves once Redis confirmed the subscription.

        The subscription is replayed after every reconnect (messages published while
        disconnected are lost: Redis pub/sub is at-most-once). A channel has one callback:
        subscribing again replaces it. A raising callback is logged; a slow one delays
        only its own messages.
        """
        self._subscribe("subscribe", "channel", channels, callback)

    def psubscribe(self, patterns: str | bytes | Iterable[str | bytes], callback: Callback) -> None:
        """Like :meth:`subscribe`, for glob-style patterns (``message["pattern"]`` set)."""
        self._subscribe("psubscribe", "pattern", patterns, callback)

    def unsubscribe(self, channels: str | bytes | Iterable[str | bytes] | None = None) -> None:
        """Stop delivering ``channels`` (default: every channel). Unknown names are ignored."""
        self._unsubscribe("unsubscribe", "channel", channels)

    def punsubscribe(self, patterns: str | bytes | Iterable[str | bytes] | None = None) -> None:
        """Stop delivering ``patterns`` (default: every pattern)."""
        self._unsubscribe("punsubscribe", "pattern", patterns)

    def _subscribe(
        self,
        kind: str,
        sub_kind: str,
        names: str | bytes | Iterable[str | bytes],
        callback: Callback,
    ) -> None:
        self._refuse_in_pool()
        if not callable(callback):
            raise TypeError(f"{kind}() needs a callable callback, got {callback!r}")
        hash(callback)  # delivery threads are per callback: it must be hashable
        keys = self._keys(names)
        for key in keys:
            self._subs[(sub_kind, key)] = callback
        self.replay("pubsub", self._replay_pubsub)
        self._wait(self._ensure_listener(self.resource).request(kind, keys, callback), kind)

    def _unsubscribe(
        self, kind: str, sub_kind: str, names: str | bytes | Iterable[str | bytes] | None
    ) -> None:
        self._refuse_in_pool()
        if names is None:
            keys = [n for k, n in self._subs if k == sub_kind]
        else:
            keys = [n for n in self._keys(names) if (sub_kind, n) in self._subs]
        for key in keys:
            del self._subs[(sub_kind, key)]
        if not self._subs:
            self.forget("pubsub")
        listener = self._listeners.get(id(self.resource))
        if listener is None or not keys:
            return
        if not self._subs:  # nothing left: free the connection and the threads
            del self._listeners[id(self.resource)]
            listener.close()
            return
        self._wait(listener.request(kind, keys), kind)

    def _refuse_in_pool(self) -> None:
        if "#" in self.name:
            raise ValueError(
                f"pub/sub is not available on a pooled redis resource ({self.name!r}): a "
                "subscription would live on one member while unsubscribe may reach another. "
                "Configure a separate redis resource with pool_size = 1 for pub/sub "
                "(publish works anywhere)."
            )

    def _keys(self, names: str | bytes | Iterable[str | bytes]) -> list[bytes]:
        items = [names] if isinstance(names, (str, bytes)) else list(names)
        if not items or not all(isinstance(n, (str, bytes)) for n in items):
            raise TypeError(f"expected a channel name or a list of names, got {names!r}")
        encode = self.resource.get_encoder().encode
        return list(dict.fromkeys(bytes(encode(n)) for n in items))

    def _ensure_listener(self, owner: redis.Redis) -> _Listener:
        """The pub/sub listener of the incarnation whose command client is ``owner``
        (kept per incarnation, so an aborted one's never serves its successor)."""
        listener = self._listeners.get(id(owner))
        if listener is None or listener.owner is not owner:
            listener = self._listeners[id(owner)] = _Listener(self, owner)
        return listener

    def _wait(self, future: concurrent.futures.Future[None], what: str) -> None:
        """Wait for Redis to confirm a subscription change (a fault if it never does)."""
        timeout = self.config.socket_timeout or 30.0
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise redis.TimeoutError(
                f"{what}: no confirmation from Redis within {timeout}s"
            ) from None

    def _replay_pubsub(self, client: redis.Redis) -> None:
        """Subscribe again on a new connection: one request per callback and kind."""
        if not self._subs:
            return
        groups: dict[tuple[str, Callback], list[bytes]] = {}
        for (sub_kind, name), callback in self._subs.items():
            kind = "subscribe" if sub_kind == "channel" else "psubscribe"
            groups.setdefault((kind, callback), []).append(name)
        listener = self._ensure_listener(client)
        futures = [
            (kind, listener.request(kind, names, callback))
            for (kind, callback), names in groups.items()
        ]
        for kind, future in futures:
            self._wait(future, kind)


def _command(name: str) -> Callable[..., Any]:
    """A thin handle method calling the client's method of the same name."""
    target = getattr(redis.Redis, name)

    @functools.wraps(target)
    def command(self: RedisActor, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.resource, name)(*args, **kwargs)

    command.__qualname__ = f"RedisActor.{name}"
    command.__module__ = __name__
    return command


def _execute_command(self: RedisActor, *args: Any, **options: Any) -> Any:
    """Send a raw command: ``execute_command("OBJECT", "ENCODING", "k")``. Commands that
    would change the connection's state (MULTI, SELECT, SUBSCRIBE, CLIENT REPLY, ...) are
    refused with ``ValueError``; the reply is parsed as redis-py parses it."""
    _check_raw(args)
    return self.resource.execute_command(*args, **options)


for _name in COMMANDS:
    setattr(RedisActor, _name, _command(_name))
del _name
_execute_command.__name__ = "execute_command"
_execute_command.__qualname__ = "RedisActor.execute_command"
RedisActor.execute_command = _execute_command  # type: ignore[attr-defined]
