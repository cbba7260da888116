"""Keep credentials out of status, events, logs and exception messages."""

from __future__ import annotations

import re

# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?=@)"
)
# password=secret, password='a b', {'password': 'secret'} in DSNs and kwarg dumps (not a
# URL's user name that happens to be "pwd": scheme://pwd:secret@ is the pattern above), and
# Password=b'secret' in the repr of a bytes field (asyncua's UserNameIdentityToken)
_KV_PASSWORD = re.compile(
    r"(?i)(?P<head>(?<!//)\b\w*(?:password|passwd|pwd|secret)['\"]?\s*[=:]\s*)"
    r"(?P<pw>b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"|[^'\"\s,;&)}]+)"
)


def redact(text: object) -> str:
    """Return ``str(text)`` with passwords in URLs and key=value pairs masked."""
    s = str(text)
    s = _URL_PASSWORD.sub(r"\g<head>***", s)
    return _KV_PASSWORD.sub(_mask_value, s)


def _mask_value(m: re.Match[str]) -> str:
    pw = m.group("pw")
    prefix = "b" if pw[:1] in "bB" and pw[1:2] in ("'", '"') else ""
    quote = pw[len(prefix)] if pw[len(prefix):len(prefix) + 1] in ("'", '"') else ""
    return f"{m.group('head')}{prefix}{quote}***{quote}"


_BREAKS = re.compile(r"\s*\n\s*")


def describe(error: BaseException | str) -> str:
    """``Type: message`` of an exception (``ConnectionRefusedError: [Errno 111]
    Connection refused``), on one line, credentials masked; a string as it is (masked).

    Why not ``repr()``: the repr of many exceptions keeps only their ``args``
    (``FileNotFoundError(2, 'No such file or directory')``) and drops what their message
    carries (the device path, host and port), and it is harder to read in a status page
    or a log line. Like a traceback's last line, without the module of the type.
    """
    if isinstance(error, str):
        return redact(error)
    text = _BREAKS.sub(" ", str(error).strip())
    name = type(error).__name__
    return redact(f"{name}: {text}" if text else name)
