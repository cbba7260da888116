"""The pytest plugin of applib-sessions (the ``pytest11`` entry point ``sessions``).

Its fixtures are documented in :mod:`sessions.testing`, where their helpers live. This
module imports nothing of the library until a test asks for a fixture: having the
library installed changes nothing else in a pytest run (nor which copy of ``sessions``
a test session imports, which matters to checkouts and mutation testing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sessions import System
    from sessions.testing import EventLog


@pytest.fixture
def sessions_events() -> EventLog:
    """The supervision events of the systems this test started with ``sessions_system``
    (a :class:`sessions.testing.EventLog`: ``wait_for(ChildRestarting, name="db")``)."""
    from sessions.testing import EventLog  # noqa: PLC0415 - see the module docstring

    return EventLog()


@pytest.fixture
def sessions_system(sessions_events: EventLog) -> Iterator[Callable[..., System]]:
    """``sessions_system(config, overrides=None, **start_kwargs)``: a started system
    (config: a dict or a TOML path; ``overrides`` merged in), stopped after the test. The
    test fails if a library thread outlived it or a call's future was left unresolved."""
    from sessions.testing import Harness  # noqa: PLC0415 - see the module docstring

    harness = Harness(sessions_events)
    yield harness.start
    problems = harness.finish()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)

