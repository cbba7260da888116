"""What the kernel lane's guest provides (see scripts/kernel-lane's /init): busybox and
the module files in /run/kl, i2c-stub loaded with chips at 0x48 and 0x50, vcan0 up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

IN_LANE = os.environ.get("SESSIONS_KERNEL_LANE") == "1"
KL = Path("/run/kl")
BUSYBOX = str(KL / "busybox")
STUB_NAME = "SMBus stub driver"
STUB_CHIPS = (0x48, 0x50)
STUB_PARAMS = "chip_addr=" + ",".join(f"{a:#04x}" for a in STUB_CHIPS)
VCAN = "vcan0"

BACKOFF = {"initial": 0.05, "max": 0.2, "jitter": 0.0}


def busybox(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a busybox applet (ip, insmod, rmmod: the host userland has no kmod tools)."""
    return subprocess.run(
        [BUSYBOX, *args], capture_output=True, text=True, timeout=30, check=check
    )


def stub_bus() -> int | None:
    """The number N of /dev/i2c-N whose adapter is i2c-stub, found by its name; None
    when the module is not loaded."""
    for adapter in sorted(Path("/sys/class/i2c-adapter").glob("i2c-*")):
        if (adapter / "name").read_text().strip() == STUB_NAME:
            return int(adapter.name.removeprefix("i2c-"))
    return None


def stub_loaded() -> bool:
    return Path("/sys/module/i2c_stub").exists()


def insmod_stub() -> None:
    busybox("insmod", str(KL / "i2c-stub.ko"), STUB_PARAMS)


def ensure_vcan() -> None:
    """vcan0 present and up (after a test took it down or deleted it)."""
    if not Path(f"/sys/class/net/{VCAN}").exists():
        busybox("ip", "link", "add", "dev", VCAN, "type", "vcan")
    busybox("ip", "link", "set", VCAN, "up")


def system_config(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Generous timeouts (Python in the guest is 20-40x slower than on a host), quick
    restarts without jitter, and room for the restarts an outage causes."""
    return {
        "supervisor": {"max_restarts": 100, "period": 10.0, "backoff": BACKOFF},
        "resources": {
            name: {"call_timeout": 30.0, **spec} for name, spec in resources.items()
        },
    }
