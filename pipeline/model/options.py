"""The model options checked before anything is loaded (``--device``, ``--dtype``), torch-free,
so a run can refuse a bad value, or answer that nothing is new, without importing torch."""

from __future__ import annotations

import re

from traitlens.store.errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def check_device(device: str) -> None:
    """Refuse a ``--device`` torch does not know, before anything is loaded (an :class:`InputError`)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")
