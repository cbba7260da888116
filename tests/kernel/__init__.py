"""Tests against real Linux drivers (i2c-dev + i2c-stub, SocketCAN vcan), run only in the
QEMU guest of ``scripts/kernel-lane``; the host's normal run does not collect them."""
