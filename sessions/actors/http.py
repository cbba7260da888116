"""The ``http`` kind: an HTTP API behind a supervised ``requests.Session``.

Each actor owns one ``requests.Session`` (the requests maintainers' advice is one
Session per thread: it has no thread-safety contract, psf/requests #2766). A pool
(``pool_size = N``) is N actors, each with its own Session and its own keep-alive
connection, behind one handle. Every call returns a ``requests.Response`` whose body
has been read in full on the actor thread and which has been detached from the
connection (``raw`` is ``None``), so it is plain data that any thread may use.

What is a fault, and what goes to the caller:

+-------------------------------------------+------------------+-------------+-----------+
| what happened                             | the caller gets  | the actor   | breaker   |
+===========================================+==================+=============+===========+
| any HTTP status, 1xx to 5xx               | the Response     | keeps going | success   |
+-------------------------------------------+------------------+-------------+-----------+
| ``requests.ConnectionError``: refused,    | that exception   | keeps going | failure   |
| reset, dropped, DNS, ``SSLError``,        |                  |             |           |
| ``ConnectTimeout``                        |                  |             |           |
+-------------------------------------------+------------------+-------------+-----------+
| ``requests.Timeout`` (``ReadTimeout``),   | that exception   | keeps going | failure   |
| ``ChunkedEncodingError`` (body cut),      |                  |             |           |
| ``RetryError``                            |                  |             |           |
+-------------------------------------------+------------------+-------------+-----------+
| bad arguments: ``ValueError`` (a foreign  | that exception   | keeps going | not       |
| origin, ``timeout=None``, ``stream``),    |                  |             | counted   |
| ``TypeError``, ``InvalidURL``,            |                  |             |           |
| ``TooManyRedirects``, anything else       |                  |             |           |
+-------------------------------------------+------------------+-------------+-----------+
| the Session's connection pool was closed  | ``ResourceFault``| restarts    | failure   |
| under it (urllib3 ``ClosedPoolError``,    | (cause: the      | with a new  |           |
| bare or wrapped in ``ConnectionError``)   | driver error)    | Session     |           |
+-------------------------------------------+------------------+-------------+-----------+

Why connection errors are never faults: urllib3 already drops a broken connection
from the Session's pool and opens a fresh one on the next request, so a restart (a new
Session) would fix nothing, and every restart counts toward the supervisor's
intensity: an API outage would make the supervisor give up, turning a remote,
temporary problem into a local, permanent one. The circuit breaker
(``breaker = {failures, reset_timeout}``) is the tool for an outage: it counts the
connection errors and makes calls fail at once while the API is down.

``connect()`` does no network I/O (it only builds the Session), so a system starts
while the API is down; calls then fail with ``ConnectionError`` until it is back.

No unbounded wait: every request has a (connect, read) timeout (default (3.05, 5.0) s; an
unbounded one, ``None`` or infinity, is refused in the config and per call). The read
timeout bounds the wait *between* bytes, so a server trickling a body, DNS resolution and
retry backoff are not bounded by it: the runtime's stall watchdog is, and
:meth:`HTTPActor.abort` is how it frees the actor. The Session's adapter remembers every
connection urllib3 makes (an in-flight connection is not in its pool's idle queue), so
``abort`` shuts down the socket of the request in flight from another thread, closes the
pools (a retry then fails with ``ClosedPoolError``, a fault) and refuses new connections.

``requests`` is imported lazily (inside the methods) so that this module, and
``HTTPSessionManager`` with it, can be imported without the ``http`` extra.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import re
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from sessions._redact import redact
from sessions._runtime.abort import shutdown_socket
from sessions._runtime.contract import ResourceActor

if TYPE_CHECKING:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3 import PoolManager
    from urllib3.util.retry import Retry

__all__ = ["HTTPActor", "HTTPOptions"]

log = logging.getLogger("sessions.http")

DEFAULT_CONNECT_TIMEOUT = 3.05
"""Seconds to wait for a TCP connect: just over a multiple of 3 s, the initial TCP
SYN retransmission window (the value the requests documentation suggests)."""

DEFAULT_READ_TIMEOUT = 5.0
"""Seconds to wait between bytes of a response: the default ``call_timeout``, so that
by default the actor never waits on a socket longer than its caller waits for it."""

DEFAULT_RETRY_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE")
"""urllib3's idempotent methods: POST and PATCH are never retried unless listed."""

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_Status = Annotated[int, Field(ge=100, le=599)]


def _number_or(other: str) -> Callable[[Any], str]:
    """A discriminator for a ``number | other`` union: a mistake is then reported against
    the member the value was meant for (``timeout.pair.1: must be > 0``) only."""

    def which(value: Any) -> str:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return "number" if is_number else other

    return which


class RetryOptions(BaseModel):
    """``retries = { total, backoff_factor, status_forcelist, allowed_methods, ... }``:
    a urllib3 ``Retry`` mounted on the Session's adapter. Retries happen inside one
    call, on the actor thread, so they count against that call's ``call_timeout``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total: int = Field(3, ge=0, description="Most retries of one request, all causes.")
    backoff_factor: float = Field(
        0.0, ge=0, description="Sleep backoff_factor * 2**(n-1) s before retry n (0: none)."
    )
    backoff_max: float = Field(
        10.0, ge=0, description="Cap on one backoff sleep (s); urllib3's own default is 120."
    )
    status_forcelist: tuple[_Status, ...] = Field(
        (),
        description="Statuses to retry (e.g. [502, 503, 504]); the last response is "
        "returned when retries run out.",
    )
    allowed_methods: tuple[str, ...] = Field(
        DEFAULT_RETRY_METHODS,
        description="Methods that may be retried after the request was sent. POST and "
        "PATCH are not idempotent and are left out by default.",
    )
    respect_retry_after_header: bool = Field(
        False,
        description="Sleep for a 413/429/503 Retry-After. Off by default: urllib3 "
        "does not cap it, and the actor would be blocked for as long as the server asks.",
    )

    @field_validator("allowed_methods")
    @classmethod
    def _upper(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in methods)


class AuthOptions(BaseModel):
    """``auth = { username, password }`` (HTTP Basic) or ``auth = { token }`` (a bearer
    token, ``Authorization: <scheme> <token>``). Values usually come from the
    environment (``"${API_PASS}"``); secrets are kept as ``SecretStr`` and never logged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str | None = Field(None, description="HTTP Basic user name.")
    password: SecretStr | None = Field(None, description="HTTP Basic password.")
    token: SecretStr | None = Field(None, description="Bearer token.")
    scheme: str = Field("Bearer", description="Authorization scheme used with `token`.")

    @model_validator(mode="after")
    def _complete(self) -> AuthOptions:
        """Either basic or bearer, complete. Messages name keys, never values."""
        basic = self.username is not None or self.password is not None
        if basic and self.token is not None:
            raise ValueError("give either username and password, or token, not both")
        if basic and (self.username is None or self.password is None):
            raise ValueError("basic auth needs both username and password")
        if not basic and self.token is None:
            raise ValueError("give username and password, or token")
        return self


class HTTPOptions(BaseModel):
    """Config keys of an ``http`` resource (besides the supervision keys); the one place
    they and their defaults are declared (``HTTPActor.Options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="http(s)://host[:port][/prefix]; every path is joined to it. "
        "No credentials in it: use `auth`."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent with every request."
    )
    timeout: Annotated[
        Annotated[_Seconds, Tag("number")] | Annotated[tuple[_Seconds, _Seconds], Tag("pair")],
        Discriminator(_number_or("pair")),
    ] = Field(
        (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT),
        description="Seconds: one number for both, or [connect, read]. Never "
        "unbounded (None and infinity are refused). Keep the read timeout at or "
        "below call_timeout.",
    )
    retries: Annotated[
        Annotated[Annotated[int, Field(ge=0, strict=True)], Tag("number")]
        | Annotated[RetryOptions, Tag("table")],
        Discriminator(_number_or("table")),
    ] = Field(
        0,
        description="0: requests' default (no retry once the request was sent); "
        "N: a urllib3 Retry(total=N); or a table (see RetryOptions).",
    )
    verify: bool | str = Field(
        True, description="Verify TLS certificates (true), skip (false), or a CA bundle path."
    )
    cert: str | tuple[str, str] | None = Field(
        None, description="Client certificate: a PEM path, or [cert, key] paths."
    )
    auth: AuthOptions | None = Field(None, description="Basic or bearer credentials.")
    trust_env: bool = Field(
        True,
        description="Let requests read proxies, CA bundles and .netrc from the "
        "environment (requests' default).",
    )

    @field_validator("base_url")
    @classmethod
    def _usable_base_url(cls, url: str) -> str:
        return _check_base_url(url)


class HTTPActor(ResourceActor):
    """One ``requests.Session`` to one HTTP API (``base_url``).

    A lease (``with api.lease() as s``) holds one member, so one Session with its
    cookies and keep-alive connection: the block's requests go out on it one at a time,
    in order. Nothing is undone if the block raises (HTTP has no transaction).

    Methods ``get``, ``post``, ``put``, ``patch``, ``delete``, ``head``, ``options``
    and ``request(method, path, **kwargs)`` take a path (joined to ``base_url``) and
    the keyword arguments of ``requests.Session.request`` (``params``, ``json``,
    ``data``, ``headers``, ``timeout``, ...), and return the ``requests.Response``,
    body read. HTTP error statuses are returned, never raised.
    """

    kind: ClassVar[str] = "http"

    Options = HTTPOptions
    config: HTTPOptions

    def __init__(self, base_url: str | None = None, /, **options: Any) -> None:
        """``HTTPActor(base_url, **options)``: the keys of :class:`HTTPOptions`;
        ``base_url`` may also be given as a keyword (as the config does)."""
        if base_url is not None:
            if "base_url" in options:
                raise TypeError("HTTPActor got base_url both as an argument and a keyword")
            options["base_url"] = base_url
        super().__init__(**options)
        self._origin = _origin(self.config.base_url)

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> requests.Session:
        """Build a fresh Session (no network I/O: the API may be down at start)."""
        config = self.config
        session = _session_class()(frozenset(config.headers))
        session.trust_env = config.trust_env
        session.headers.update(config.headers)
        session.verify = config.verify
        session.cert = config.cert
        session.auth = _auth(config.auth)
        # One thread uses this Session, so one connection per host is all it needs.
        adapter: HTTPAdapter = _adapter_class()(pool_maxsize=1, max_retries=self._build_retry())
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def check_connection(self) -> str:
        """``sessions check --connect``: ``connect()`` does no I/O, so send ``HEAD`` to
        ``base_url`` through the Session (its proxies, TLS settings and auth apply) and
        report the status line. Any HTTP answer, an error status included, proves the
        server is there; no answer (refused, timed out, TLS failure) raises
        ``ConnectionError`` naming the URL and the reason."""
        import requests  # noqa: PLC0415 - the driver, imported by connect() already

        url = self.config.base_url
        try:
            response = self.resource.head(url, timeout=self.config.timeout,
                                          allow_redirects=False)
        except requests.RequestException as exc:
            raise ConnectionError(f"HEAD {url} got no answer: {_root_cause(exc)}") from exc
        return f"HEAD {url} answered {response.status_code} {response.reason}".rstrip()

    def disconnect(self, resource: requests.Session) -> None:
        """Close the Session's pooled connections."""
        resource.close()

    def abort(self, resource: requests.Session | None) -> None:
        """Make a request blocked on ``resource`` return now (from another thread).

        Shuts down the socket of every connection the Session's adapters made (the one
        in flight included: a blocked read ends, the call raises ``ConnectionError``),
        closes their pools and refuses new connections, so a urllib3 retry cannot reach
        the server again (it fails with ``ClosedPoolError``). A connection still in its
        TCP connect or DNS lookup has no socket yet: it is bounded by the connect
        timeout (DNS only by the resolver). ``connect()`` does no I/O, so there is no
        pending connect to abort. Non-blocking, idempotent, never raises.
        """
        if resource is None:
            return
        try:
            adapters = list(resource.adapters.values())
        except Exception as exc:  # mounted anew meanwhile: nothing of ours to find
            log.debug("abort: cannot list the adapters: %r", exc)
            return
        for adapter in adapters:
            tracker = getattr(adapter, "abort_tracker", None)
            if isinstance(tracker, _Tracker):
                tracker.abort()

    def is_fault(self, exc: BaseException) -> bool:
        """Only a closed connection pool: the Session itself is unusable. Connection
        errors and timeouts are not faults (see the module docstring)."""
        from urllib3.exceptions import ClosedPoolError  # noqa: PLC0415

        if isinstance(exc, ClosedPoolError):
            return True
        import requests  # noqa: PLC0415

        return (
            isinstance(exc, requests.ConnectionError)
            and bool(exc.args)
            and isinstance(exc.args[0], ClosedPoolError)
        )

    def counts_as_failure(self, exc: BaseException) -> bool:
        """Connection errors, timeouts, bodies cut short and exhausted retries open the
        breaker; errors in the caller's arguments do not."""
        import requests  # noqa: PLC0415
        from requests.exceptions import ChunkedEncodingError, RetryError  # noqa: PLC0415

        return self.is_fault(exc) or isinstance(
            exc, (requests.ConnectionError, requests.Timeout, ChunkedEncodingError, RetryError)
        )

    def _build_retry(self) -> Retry | int:
        """The urllib3 ``Retry`` for the adapter; 0 is requests' default (no retry once
        a request has reached the server)."""
        from urllib3.util.retry import Retry  # noqa: PLC0415

        spec = self.config.retries
        if isinstance(spec, int):
            if spec == 0:
                return 0
            spec = RetryOptions(total=spec)
        return Retry(
            total=spec.total,
            backoff_factor=spec.backoff_factor,
            backoff_max=spec.backoff_max,
            status_forcelist=spec.status_forcelist,
            allowed_methods=spec.allowed_methods,
            respect_retry_after_header=spec.respect_retry_after_header,
            raise_on_status=False,  # statuses go to the caller as responses
        )

    # -- calls ------------------------------------------------------------------------

    def request(self, method: str, path: str = "", **kwargs: Any) -> requests.Response:
        """Send ``method`` to ``path`` (joined to ``base_url``; an absolute URL must be
        on the same origin) and return the response with its body read and detached.

        ``kwargs`` are those of ``requests.Session.request``. ``timeout`` may be given
        per call but never ``None`` (unbounded); ``stream=True`` is refused because the
        body is always read in full before the response leaves the actor thread.
        """
        if kwargs.pop("stream", None):
            raise ValueError(
                "stream=True is not supported: the body is read in full on the "
                "actor thread so that the response is safe to use anywhere"
            )
        if "timeout" in kwargs:
            _check_timeout(kwargs["timeout"])
        else:
            kwargs["timeout"] = self.config.timeout
        session: requests.Session = self.resource
        response = session.request(method.upper(), self.url(path), **kwargs)
        return _detached(response)

    def get(self, path: str = "", **kwargs: Any) -> requests.Response:
        """GET ``path``; see :meth:`request`."""
        return self.request("GET", path, **kwargs)

    def options(self, path: str = "", **kwargs: Any) -> requests.Response:
        """OPTIONS ``path``; see :meth:`request`."""
        return self.request("OPTIONS", path, **kwargs)

    def head(self, path: str = "", **kwargs: Any) -> requests.Response:
        """HEAD ``path``; redirects are not followed unless asked (as in requests)."""
        kwargs.setdefault("allow_redirects", False)
        return self.request("HEAD", path, **kwargs)

    def post(self, path: str = "", **kwargs: Any) -> requests.Response:
        """POST ``path`` (``json=`` or ``data=``); never retried unless configured."""
        return self.request("POST", path, **kwargs)

    def put(self, path: str = "", **kwargs: Any) -> requests.Response:
        """PUT ``path``; see :meth:`request`."""
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str = "", **kwargs: Any) -> requests.Response:
        """PATCH ``path``; never retried unless configured."""
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str = "", **kwargs: Any) -> requests.Response:
        """DELETE ``path``; see :meth:`request`."""
        return self.request("DELETE", path, **kwargs)

    def url(self, path: str = "") -> str:
        """The URL a call to ``path`` goes to.

        A relative path is appended to ``base_url`` (its path prefix is kept:
        ``base_url = ".../api/v1"`` and ``"/users"`` give ``.../api/v1/users``). An
        absolute URL is allowed only on ``base_url``'s origin (scheme, host, port): the
        Session's headers and credentials belong to this API, and the resource, its
        pool and its breaker stand for this one service.
        """
        base_url = self.config.base_url
        parts = urlsplit(path)
        if parts.scheme or parts.netloc:
            target = path if parts.scheme else f"{urlsplit(base_url).scheme}:{path}"
            if _origin(target) != self._origin:
                raise ValueError(
                    f"{redact(path)!r} is not on this resource's origin "
                    f"{self._origin[0]}://{self._origin[1]}:{self._origin[2]}; "
                    "use a relative path or another resource"
                )
            return target
        if not path:
            return base_url
        if path.startswith(("?", "#")):
            return base_url + path
        return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


# -- helpers ----------------------------------------------------------------------------


class _Tracker:
    """The pools and connections one adapter's urllib3 managers made (weakly held), so
    that :meth:`abort` reaches the connection of the request in flight, which is not in
    its pool's idle queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.aborted = False

    def pool_made(self, pool: Any) -> None:
        with self._lock:
            self._pools.add(pool)
            if self.aborted:
                pool.close()

    def connection_made(self, pool: Any, connection: Any) -> None:
        from urllib3.exceptions import ClosedPoolError  # noqa: PLC0415

        with self._lock:
            if self.aborted:
                raise ClosedPoolError(pool, "the resource was aborted")
            self._connections.add(connection)

    def abort(self) -> None:
        """Shut every socket down, close every pool; from any thread, never blocks."""
        with self._lock:
            self.aborted = True
            for connection in list(self._connections):
                shutdown_socket(getattr(connection, "sock", None))
            for pool in list(self._pools):
                try:
                    pool.close()  # idle connections closed; _get_conn: ClosedPoolError
                except Exception as exc:
                    log.debug("abort: closing %r failed: %r", pool, exc)


@functools.cache
def _tracking_pool(base: Any) -> Any:
    """``base`` (a urllib3 connection pool class) telling a :class:`_Tracker` about itself
    and every connection it makes (``_new_conn``: where urllib3 makes them)."""

    class Abortable(base):  # type: ignore[misc]  # base is a urllib3 pool class
        def __init__(self, *args: Any, abort_tracker: _Tracker, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.abort_tracker = abort_tracker
            abort_tracker.pool_made(self)

        def _new_conn(self) -> Any:
            connection = super()._new_conn()
            self.abort_tracker.connection_made(self, connection)
            return connection

    Abortable.__name__ = Abortable.__qualname__ = f"Abortable{base.__name__}"
    return Abortable


def _track(manager: PoolManager, tracker: _Tracker) -> None:
    """Make ``manager`` (a urllib3 PoolManager or ProxyManager) build tracked pools:
    ``pool_classes_by_scheme`` is urllib3's hook for the pool classes it instantiates."""
    factories: dict[str, Any] = {  # factories, not classes: urllib3 only calls them
        scheme: functools.partial(_tracking_pool(cls), abort_tracker=tracker)
        for scheme, cls in manager.pool_classes_by_scheme.items()
    }
    manager.pool_classes_by_scheme = factories


@functools.cache
def _adapter_class() -> Callable[..., HTTPAdapter]:
    """``HTTPAdapter`` whose every urllib3 pool (direct or through a proxy) is tracked for
    :meth:`HTTPActor.abort`. Built on first use so that requests stays optional."""
    from requests.adapters import HTTPAdapter  # noqa: PLC0415

    class _AbortableAdapter(HTTPAdapter):
        @property
        def abort_tracker(self) -> _Tracker:
            tracker = self.__dict__.get("_abort_tracker")
            if tracker is None:  # init_poolmanager runs inside HTTPAdapter.__init__
                tracker = self.__dict__["_abort_tracker"] = _Tracker()
            return tracker

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            _track(self.poolmanager, self.abort_tracker)

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            new = proxy not in self.proxy_manager
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if new:
                _track(manager, self.abort_tracker)
            return manager

    return _AbortableAdapter


@functools.cache
def _session_class() -> Callable[[frozenset[str]], requests.Session]:
    """``requests.Session`` that also drops the configured headers on a redirect to
    another origin, as requests drops ``Authorization`` on a redirect to another host:
    an ``X-API-Key`` configured for this API must not reach whatever host a redirect
    points to. Built on first use so that requests stays an optional import."""
    import requests  # noqa: PLC0415

    class _Session(requests.Session):
        def __init__(self, private_headers: frozenset[str]) -> None:
            super().__init__()
            self.private_headers = private_headers

        def rebuild_auth(
            self, prepared_request: requests.PreparedRequest, response: requests.Response
        ) -> None:
            super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
            before, after = response.request.url, prepared_request.url
            if before and after and _origin(before) != _origin(after):
                for name in self.private_headers:
                    prepared_request.headers.pop(name, None)

    return _Session


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"base_url must be an http:// or https:// URL with a host, got {redact(url)!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"base_url must not contain credentials ({redact(url)!r}): "
            "use auth = { username, password } or auth = { token }"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"base_url must not have a query or fragment, got {redact(url)!r}: "
            "pass params= per call"
        )
    try:
        parts.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"base_url has an invalid port: {redact(url)!r}") from None
    return url


def _root_cause(exc: BaseException) -> str:
    """The innermost error of a requests/urllib3 chain, as ``Type: message`` without the
    object reprs urllib3 prefixes (``<HTTPConnection object at 0x...>: ``)."""
    cause: BaseException = exc
    for _ in range(8):
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException) and cause.args:
            inner = cause.args[0]
        if not isinstance(inner, BaseException):
            break
        cause = inner
    text = re.sub(r"^<[^>]*>: ", "", str(cause))
    return f"{type(cause).__name__}: {redact(text)}" if text else type(cause).__name__


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {redact(url)!r}") from None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _auth(auth: AuthOptions | None) -> Any:
    """The requests auth object for ``auth`` (None: no auth)."""
    if auth is None:
        return None
    if auth.token is not None:
        return _BearerAuth(auth.scheme, auth.token)
    from requests.auth import HTTPBasicAuth  # noqa: PLC0415

    assert auth.username is not None and auth.password is not None
    return HTTPBasicAuth(auth.username, auth.password.get_secret_value())


class _BearerAuth:
    """``Authorization: <scheme> <token>`` on every request (a requests auth callable).

    Like requests' own auth, it is not re-applied after a redirect to another host.
    """

    def __init__(self, scheme: str, token: SecretStr) -> None:
        self.scheme = scheme
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"{self.scheme} {self.token.get_secret_value()}"
        return request

    def __repr__(self) -> str:
        return f"<bearer auth, scheme {self.scheme!r}>"


def _check_timeout(timeout: Any) -> None:
    """A per-call timeout must be bounded: a positive number or a (connect, read) pair."""
    values = timeout if isinstance(timeout, tuple | list) else (timeout,)
    if len(values) not in (1, 2) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf
        for v in values
    ):
        raise ValueError(
            f"timeout must be a positive number or a (connect, read) pair of "
            f"positive numbers (None or infinity would wait forever), got {timeout!r}"
        )


def _detached(response: requests.Response) -> requests.Response:
    """A copy of ``response`` with its body read and no link to the connection.

    The same state requests keeps when pickling a Response (``raw`` is None, the
    content is consumed); redirect history is detached too. The original is closed,
    which returns its connection to the Session's pool.
    """
    try:
        out = copy.copy(response)  # via Response.__getstate__: reads the body, drops raw
        out.history = [_detached(r) for r in response.history]
        return out
    finally:
        response.close()
