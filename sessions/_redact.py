"""Keep credentials out of status, events, logs and exception messages."""

from __future__ import annotations

import re

# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?=@)"
)
# password=secret, password='a b', {'password': 'secret'} in DSNs and kwarg dumps
_KV_PASSWORD = re.compile(
    r"(?i)(?P<head>\b\w*(?:password|passwd|pwd|secret)['\"]?\s*[=:]\s*)"
    r"(?P<pw>'[^']*'|\"[^\"]*\"|[^'\"\s,;&)}]+)"
)


def redact(text: object) -> str:
    """Return ``str(text)`` with passwords in URLs and key=value pairs masked."""
    s = str(text)
    s = _URL_PASSWORD.sub(r"\g<head>***", s)
    return _KV_PASSWORD.sub(_mask_value, s)


def _mask_value(m: re.Match[str]) -> str:
    quote = m.group("pw")[0] if m.group("pw")[0] in "'\"" else ""
    return f"{m.group('head')}{quote}***{quote}"
