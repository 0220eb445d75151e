"""The model options checked before anything is loaded (``--device``, ``--dtype``, ``--device-map``,
``--max-memory``, ``--load-in``), torch-free, so a run can refuse a bad value, or answer that
nothing is new, without importing torch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from traitlens.store.errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies
LOAD_IN = ("4bit", "8bit")  # bitsandbytes quantisation at load time
GPU_EXTRA = "pip install -e '.[gpu]'  (or pip install 'traitlens[gpu]')"
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
_MEMORY_KEY = re.compile(r"\d+|cpu|mps|xpu:\d+")
_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", re.IGNORECASE)


def check_device(device: str) -> None:
    """Refuse a ``--device`` torch does not know, before anything is loaded (an :class:`InputError`)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")


def parse_max_memory(value: object) -> dict[str, str] | None:
    """``--max-memory``: ``0=20GiB,1=20GiB,cpu=64GiB`` (or the same as a table) -> ``{"0": "20GiB", ...}``.
    Keys are GPU indices, ``cpu`` or ``mps``; sizes are what accelerate reads (``20GiB``, ``500MB``, bytes)."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise InputError(f"--max-memory {value!r}: give DEVICE=SIZE pairs, e.g. 0=20GiB,1=20GiB,cpu=64GiB")
        table = {k.strip(): v.strip() for k, _, v in pairs}
    elif isinstance(value, dict):
        table = {str(k).strip(): str(v).strip() for k, v in value.items()}
    else:
        raise InputError(f"--max-memory {value!r}: give DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=64GiB")
    for k, v in table.items():
        if not _MEMORY_KEY.fullmatch(k):
            raise InputError(f"--max-memory: device {k!r} is not a GPU index (0, 1, ...), cpu or mps "
                             "(traitlens does not offload to disk)")
        if not _SIZE.fullmatch(v):
            raise InputError(f"--max-memory {k}={v!r}: not a size; use e.g. 20GiB, 500MB or a byte count")
    return table


@dataclass(frozen=True)
class LoadOptions:
    """How a checkpoint is loaded; none of this changes the model's identity except ``load_in``."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # accelerate places the blocks (one of DEVICE_MAPS); None: all on ``device``
    max_memory: dict[str, str] | None = None  # per device, for device_map (implies device_map="auto")
    load_in: str | None = None  # "4bit" | "8bit" (bitsandbytes)

    def checked(self) -> "LoadOptions":
        """The options with ``max_memory`` parsed; an :class:`InputError` names a bad one."""
        check_device(self.device)
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r}: use {', '.join(DTYPES)}")
        max_memory = parse_max_memory(self.max_memory)
        device_map = self.device_map or ("auto" if max_memory else None)
        if device_map is not None and device_map not in DEVICE_MAPS:
            raise InputError(f"--device-map {device_map!r}: use {', '.join(DEVICE_MAPS)}")
        if device_map is not None and self.device != "auto":
            raise InputError(f"--device-map {device_map} places the model itself: leave --device at auto "
                             f"(not {self.device}); --max-memory limits what each device gets")
        if self.load_in is not None and self.load_in not in LOAD_IN:
            raise InputError(f"--load-in {self.load_in!r}: use {' or '.join(LOAD_IN)} (bitsandbytes; {GPU_EXTRA})")
        return LoadOptions(self.device, self.dtype, device_map, max_memory, self.load_in)
