"""The one parser of device strings ("auto", "cpu", "cuda", "cuda:N")."""

from __future__ import annotations

from typing import NamedTuple


class Device(NamedTuple):
    """A parsed device: `kind` "auto" | "cpu" | "cuda", canonical `name`, CUDA `index`."""

    kind: str
    name: str
    index: int


def parse_device(device: str) -> Device:
    """Parse a device string; ValueError for anything else."""
    if not isinstance(device, str):
        raise ValueError(
            f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {device!r}"
        )
    device = device.strip().lower()
    if device in ("auto", "cpu", "cuda"):
        return Device(device, device, 0)
    if device.startswith("cuda:") and device[5:].isdigit():
        return Device("cuda", device, int(device[5:]))
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
