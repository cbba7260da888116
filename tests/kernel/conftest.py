"""The kernel lane's tests run only in its guest (``SESSIONS_KERNEL_LANE=1``).

The normal host run never collects this directory (``collect_ignore`` in
``tests/conftest.py``); asked for explicitly on the host (``pytest tests/kernel``), every
test here is skipped with a reason naming the lane.
"""

from __future__ import annotations

import pytest

from tests.kernel.lane import IN_LANE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_LANE:
        return
    skip = pytest.mark.skip(
        reason="needs the kernel lane's QEMU guest (real i2c-stub and vcan): scripts/kernel-lane"
    )
    for item in items:
        if item.get_closest_marker("kernel") is not None:
            item.add_marker(skip)
