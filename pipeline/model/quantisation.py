"""``--load-in 4bit|8bit``: bitsandbytes quantises the linear layers as the checkpoint loads.

bitsandbytes is the optional extra ``[gpu]``. Before any weight is read, :func:`bnb_config`
checks that it imports and that it runs on the device the model would load on (its own list,
``bitsandbytes.supported_torch_devices``: CUDA, and other backends in recent releases); either
missing is a :class:`QuantisationUnavailable` (exit 2) naming the extra and the reason, raised
before the store is touched. 4-bit loads use NF4 with the compute dtype of ``--dtype`` (bfloat16
on CUDA by default). The quantisation is part of the model's key in the store
(:func:`~traitlens.pipeline.model.identity.model_key`).
"""

from __future__ import annotations

import importlib.util

from typing import TYPE_CHECKING

import torch

from traitlens.store.errors import InputError

from traitlens.pipeline.model.options import GPU_EXTRA

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig


class QuantisationUnavailable(InputError):
    """``--load-in`` cannot be honoured here: bitsandbytes or a device it runs on is missing (exit 2)."""


def bnb_config(load_in: str, device: torch.device, dtype: torch.dtype) -> BitsAndBytesConfig:
    """A ``BitsAndBytesConfig`` for ``--load-in load_in`` on ``device``, computing in ``dtype``."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantisationUnavailable(f"--load-in {load_in} needs bitsandbytes, which is not installed: it is the "
                                      f"optional extra [gpu]: {GPU_EXTRA}")
    try:
        import bitsandbytes
    except Exception as e:  # installed, but its native library does not load (no CUDA runtime, ...)
        raise QuantisationUnavailable(f"--load-in {load_in}: bitsandbytes is installed but does not load "
                                      f"({type(e).__name__}: {e}); reinstall the extra [gpu] on a machine "
                                      f"with a GPU: {GPU_EXTRA}") from None
    runs_on = set(getattr(bitsandbytes, "supported_torch_devices", None) or {"cuda"})
    if device.type not in runs_on:
        seen = f"torch {torch.__version__} sees no CUDA GPU" if not torch.cuda.is_available() else "--device says so"
        raise QuantisationUnavailable(
            f"--load-in {load_in}: bitsandbytes {getattr(bitsandbytes, '__version__', '')} runs on "
            f"{', '.join(sorted(runs_on))}, and this model would load on {device.type} ({seen}); run on a GPU "
            f"machine with the extra [gpu] ({GPU_EXTRA}), or drop --load-in")
    from transformers import BitsAndBytesConfig

    if load_in == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",  # type: ignore[no-untyped-call]
                                  bnb_4bit_compute_dtype=dtype)  # (transformers leaves its __init__ unannotated)
    return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
