"""The exception tree (pickling, subclassing) and credential redaction."""

from __future__ import annotations

import copy
import pickle
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sessions
from sessions import (
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
from sessions._redact import describe, redact

EXAMPLES: list[tuple[SessionsError, dict[str, object]]] = [
    (SessionsError("plain"), {}),
    (SessionsError("with details", resource="a", extra=[1, 2]), {"resource": "a"}),
    (ResourceFault("query broke", resource="db", method="query"), {"method": "query"}),
    (ResourceBroken("link desynchronized"), {}),
    (InjectedFault("a fault injected into a call to 'db'"), {}),
    (ResourceUnavailable("stopped", resource="cache"), {"resource": "cache"}),
    (LeaseBroken("lease ended", resource="db#1", lease="db-lease-1"),
     {"resource": "db#1", "lease": "db-lease-1"}),
    (
        CallTimeout("m", resource="a", started=False),
        {"resource": "a", "started": False},
    ),
    (CallTimeout("m2", resource="b", started=True), {"started": True}),
    (ChildRunning("a is running", name="a"), {"name": "a"}),
    (DeviceError("m", address=0x48, errno=6), {"address": 0x48, "errno": 6}),
    (DeviceError("no address", address=None, errno=121), {"address": None}),
    (
        ConfigError([("a.b", "bad"), ("c", "worse")]),
        {"path": "a.b", "errors": [("a.b", "bad"), ("c", "worse")]},
    ),
    (ConfigError([("supervisor.period", "must be > 0")]), {"path": "supervisor.period"}),
    (ConfigError([]), {"path": ""}),
]
IDS = [f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(EXAMPLES)]


@pytest.mark.parametrize(("err", "attrs"), EXAMPLES, ids=IDS)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(err: SessionsError, attrs: dict[str, object], protocol: int) -> None:
    """Class, message, args and keyword attributes survive pickling with every protocol."""
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.args == err.args
    for name, value in attrs.items():
        assert getattr(back, name) == value
    assert vars(back) == vars(err)


@pytest.mark.parametrize(("err", "attrs"), EXAMPLES, ids=IDS)
def test_copy_round_trip(err: SessionsError, attrs: dict[str, object]) -> None:
    """``copy`` and ``deepcopy`` (which use the same reduction) keep everything too."""
    for clone in (copy.copy(err), copy.deepcopy(err)):
        assert type(clone) is type(err)
        assert str(clone) == str(err)
        assert vars(clone) == vars(err)


def test_config_error_keeps_path_and_errors() -> None:
    """A ConfigError's ``path`` is the first problem's and ``errors`` lists them all."""
    err = ConfigError([("a.b", "bad"), ("c", "worse")])
    back = pickle.loads(pickle.dumps(err))
    assert back.path == "a.b"
    assert list(back.errors) == [("a.b", "bad"), ("c", "worse")]
    assert str(back) == "2 problems:\n  a.b: bad\n  c: worse"
    assert isinstance(back, ValueError)


def test_config_error_message_shapes() -> None:
    """One problem reads ``path: message``; no path reads just the message."""
    assert str(ConfigError([("x.y", "wrong")])) == "x.y: wrong"
    assert str(ConfigError([("", "whole file is wrong")])) == "whole file is wrong"
    empty = ConfigError([])
    assert empty.errors == [("", "invalid configuration")]
    assert str(empty) == "invalid configuration"


def test_pickled_error_can_be_raised_and_caught() -> None:
    """A rebuilt error is a real exception of its class, catchable as its bases."""
    back = pickle.loads(pickle.dumps(CallTimeout("late", resource="a", started=True)))
    with pytest.raises(TimeoutError) as info:
        raise back
    assert isinstance(info.value, CallTimeout)
    assert info.value.started is True


@pytest.mark.parametrize(
    "cls",
    [ConfigError, ResourceFault, ResourceBroken, ResourceUnavailable, LeaseBroken, CallTimeout,
     ChildRunning, DeviceError],
)
def test_all_derive_from_sessions_error(cls: type[Exception]) -> None:
    """Every library exception is a SessionsError (one ``except`` catches them all)."""
    assert issubclass(cls, SessionsError)
    assert issubclass(cls, Exception)


def test_every_exported_exception_is_covered() -> None:
    """Every exported exception is a SessionsError and has a pickling example above."""
    exported = [getattr(sessions, n) for n in sessions.__all__]
    exceptions = {o for o in exported if isinstance(o, type) and issubclass(o, BaseException)}
    assert all(issubclass(e, SessionsError) for e in exceptions)
    assert exceptions == {type(e) for e, _ in EXAMPLES}, "add the new class to EXAMPLES"


def test_builtin_bases() -> None:
    """ConfigError is a ValueError; CallTimeout is a TimeoutError; the rest are not."""
    assert issubclass(ConfigError, ValueError)
    assert issubclass(CallTimeout, TimeoutError)
    assert isinstance(CallTimeout("m", resource="a", started=False), OSError)
    assert not issubclass(ResourceFault, (ValueError, TimeoutError))
    assert not issubclass(ResourceUnavailable, (ValueError, TimeoutError))
    assert not issubclass(SessionsError, (ValueError, TimeoutError))


# -- redaction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("postgresql+psycopg://user:s3cret@host/db", ["postgresql+psycopg://user:", "@host/db"]),
        ("postgresql://user:s3cret@host:5432/db?sslmode=require", ["user:", "@host:5432/db"]),
        ("redis://:s3cret@host:6379/0", ["redis://:", "@host:6379/0"]),
        ("amqp://guest:s3cret@rabbit//", ["amqp://guest:", "@rabbit//"]),
        (
            "failed: OperationalError('connection to mysql://root:s3cret@10.0.0.1/x refused')",
            ["mysql://root:", "@10.0.0.1/x refused"],
        ),
        ("url=http://a:s3cret@h1/ and http://b:s3cret@h2/", ["http://a:", "@h1/", "@h2/"]),
    ],
)
def test_redact_url_password(text: str, kept: list[str]) -> None:
    """A URL's password is masked; scheme, user, host and path stay."""
    out = redact(text)
    assert "s3cret" not in out
    assert "***" in out
    for part in kept:
        assert part in out


def test_redact_url_exact() -> None:
    """The masked URL keeps everything but the password."""
    assert (
        redact("postgresql+psycopg://user:s3cret@host/db")
        == "postgresql+psycopg://user:***@host/db"
    )
    assert redact("redis://:pw@host") == "redis://:***@host"
    # A user named like a password key is a user: only the URL's password goes.
    assert redact("postgresql://pwd:000000@a/db") == "postgresql://pwd:***@a/db"
    assert redact("mqtt://password:x@broker:1883") == "mqtt://password:***@broker:1883"


@pytest.mark.parametrize(
    "text",
    [
        "host=h port=5432 password=s3cret dbname=app",
        "password = s3cret",
        "PASSWORD=s3cret",
        "pwd=s3cret;uid=sa",
        "passwd: s3cret",
        "connect(user='u', password='s3cret', host='h')",
        'connect(password="s3cret")',
        "https://h/login?user=u&password=s3cret&next=1",
        "UserNameIdentityToken(UserName='u', Password=b's3cret', EncryptionAlgorithm=None)",
        "Token(Password=b'it\\'s s3cret')",  # an escaped quote inside
    ],
)
def test_redact_password_pairs(text: str) -> None:
    """``password=...`` (and its spellings) is masked, the other pairs stay."""
    out = redact(text)
    assert "s3cret" not in out
    assert "***" in out


def test_redact_keeps_other_pairs() -> None:
    """Only the password value is replaced."""
    assert (
        redact("host=h port=5432 password=s3cret dbname=app")
        == "host=h port=5432 password=*** dbname=app"
    )
    assert redact("https://h/?user=u&password=s3cret&next=1") == (
        "https://h/?user=u&password=***&next=1"
    )


def test_redact_dict_repr() -> None:
    """A dumped kwargs dict (``str(dict)``) does not leak its password."""
    assert "s3cret" not in redact({"user": "u", "password": "s3cret"})


def test_redact_quoted_password_with_space() -> None:
    """A quoted DSN password containing a space is masked entirely."""
    assert "secret" not in redact("host=h password='my secret' dbname=d")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "resource 'db' faulted: ConnectionError('link lost')",
        "postgresql://host:5432/db",
        "http://example.com:8080/path?q=1",
        "user@example.com wrote: hello",
        "ratio 3:4 at 12:30",
    ],
)
def test_redact_leaves_clean_text(text: str) -> None:
    """Text without credentials is returned unchanged."""
    assert redact(text) == text


def test_redact_accepts_objects() -> None:
    """Non-strings are redacted through ``str()``, e.g. an exception."""
    err = ConnectionError("cannot reach postgresql://u:s3cret@h/db")
    out = redact(err)
    assert isinstance(out, str)
    assert "s3cret" not in out
    assert "postgresql://u:***@h/db" in out


_CLEAN = st.text(alphabet=string.ascii_letters + string.digits + " .,-_()'\"=@", max_size=80)


@given(_CLEAN)
def test_redact_identity_without_secrets(text: str) -> None:
    """Text with no URL and no password key is never changed."""
    lowered = text.lower()
    if any(k in lowered for k in ("password", "passwd", "pwd")):
        return
    assert redact(text) == text


@given(
    user=st.text(alphabet=string.ascii_lowercase, max_size=8),
    password=st.text(alphabet=string.ascii_letters + string.digits + "!$%^*-_.~", min_size=6),
    host=st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10),
)
def test_redact_any_url_password(user: str, password: str, host: str) -> None:
    """Whatever the (URL-safe) password, it does not survive in a URL."""
    out = redact(f"postgresql://{user}:{password}@{host}/db")
    assert out == f"postgresql://{user}:***@{host}/db"


@given(st.text(alphabet=string.ascii_letters + string.digits + " :/@=';&+.", max_size=80))
def test_redact_is_idempotent(text: str) -> None:
    """Redacting twice gives the same as redacting once."""
    assert redact(redact(text)) == redact(text)


# -- describe: Type: message, as faults are shown ---------------------------------------


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (FileNotFoundError(2, "No such file or directory", "/dev/i2c-7"),
         "FileNotFoundError: [Errno 2] No such file or directory: '/dev/i2c-7'"),
        (ConnectionRefusedError(111, "Connection refused"),
         "ConnectionRefusedError: [Errno 111] Connection refused"),
        (TimeoutError(), "TimeoutError"),
        (KeyError("partition"), "KeyError: 'partition'"),
        (RuntimeError("could not connect to\n\tdb.local:5432\n"),
         "RuntimeError: could not connect to db.local:5432"),
        (OSError("connect to postgresql://app:s3cret@db/x failed"),
         "OSError: connect to postgresql://app:***@db/x failed"),
        ("a reason given as text, password=s3cret", "a reason given as text, password=***"),
    ],
)
def test_describe_is_type_and_message_on_one_line_credentials_masked(
    error: BaseException | str, shown: str
) -> None:
    """What an exception's repr drops (the device path a FileNotFoundError carries in its
    message) is kept; a multi-line message becomes one line for status and logs."""
    assert describe(error) == shown
