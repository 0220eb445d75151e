"""Where a model runs: one device, or its blocks spread over several by accelerate (``--device-map``).

With a device map, accelerate gives each block the device it runs on and moves the hidden state
between them (hooks it adds before each block's forward); a block placed on ``cpu`` while GPUs
run the rest keeps its weights on the host and runs on a GPU (its parameters then read ``meta``
on the module). So:

- inputs go to the device of the input embeddings (:func:`input_device`), not to "the" device;
- each capture hook sees its block's output on that block's device (the capturer moves its
  masks there and gathers the pooled rows for the one copy to the host);
- weights that sit on the host behind a hook are read from the hook's own weights map when the
  model is fingerprinted (:func:`state_values`);
- disk offload is refused (:func:`check_placement`): it would read every block from disk for
  every batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from traitlens.store.errors import InputError

from traitlens.pipeline.model.options import LoadOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def device_map_kwargs(opts: LoadOptions) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``opts``' device map (none without one). GPU
    indices become ints and plain byte counts numbers, as accelerate reads them."""
    if opts.device_map is None:
        return {}
    kwargs: dict[str, Any] = {"device_map": opts.device_map}
    if opts.max_memory:
        kwargs["max_memory"] = {(int(k) if k.isdigit() else k): (int(v) if v.isdigit() else v)
                                for k, v in opts.max_memory.items()}
    return kwargs


def check_placement(model: torch.nn.Module, spec: str | None) -> None:
    """Refuse a device map that left part of the model on disk (an :class:`InputError`)."""
    placed = getattr(model, "hf_device_map", None) or {}
    on_disk = sorted(name or "(the whole model)" for name, where in placed.items() if str(where) == "disk")
    if on_disk:
        raise InputError(f"--model {spec}: the device map leaves {', '.join(on_disk[:4])}"
                         f"{' ...' if len(on_disk) > 4 else ''} on disk, which traitlens does not do (every batch "
                         "would read those weights from disk): raise --max-memory, use more GPUs, or --load-in 4bit")


def _as_device(d: int | str | torch.device) -> torch.device:
    return torch.device("cuda", d) if isinstance(d, int) else torch.device(d)


def _hooks(module: torch.nn.Module) -> list[Any]:
    """accelerate's hooks on ``module`` (a SequentialHook holds several)."""
    hook = getattr(module, "_hf_hook", None)
    return [] if hook is None else list(getattr(hook, "hooks", [hook]))


def execution_device(module: torch.nn.Module) -> torch.device | None:
    """The device accelerate runs ``module`` on, when a hook says so."""
    for hook in _hooks(module):
        d = getattr(hook, "execution_device", None)
        if d is not None:
            return _as_device(d)
    return None


def input_device(model: PreTrainedModel) -> torch.device:
    """Where the input ids go: the device the input embeddings run on."""
    emb = model.get_input_embeddings()
    d = execution_device(emb)
    if d is None:
        d = emb.get_parameter("weight").device
    if d.type == "meta":  # weights behind a hook without an execution device: the map's first device
        placed = [w for w in (getattr(model, "hf_device_map", None) or {}).values() if str(w) not in ("cpu", "disk")]
        d = _as_device(placed[0]) if placed else torch.device("cpu")
    return d


def devices(model: PreTrainedModel) -> list[torch.device]:
    """Every device the model computes on (one without a device map)."""
    placed = getattr(model, "hf_device_map", None)
    if not placed:
        return [input_device(model)]
    out = {input_device(model)}
    for where in placed.values():
        if str(where) not in ("cpu", "disk"):
            out.add(_as_device(where))
    gpus = [d for d in out if d.type != "cpu"]
    return sorted(gpus or out, key=str)


def _offloaded(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The value of the state entry ``name`` that a hook keeps on the host (its module's
    parameter reads ``meta``): found in the weights map of the nearest hooked module above it."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        try:
            module = model.get_submodule(".".join(parts[:cut]))
        except AttributeError:
            continue
        rest = ".".join(parts[cut:])
        for hook in _hooks(module):
            weights = getattr(hook, "weights_map", None)
            if weights is not None and rest in weights:
                value: torch.Tensor = weights[rest]
                return value
    raise RuntimeError(f"{name} is on the meta device and no accelerate hook holds its value")


def state_values(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model's state dict in name order, offloaded weights read from
    where accelerate keeps them (so a device map does not change the fingerprint)."""
    for name, t in sorted(model.state_dict().items()):
        yield name, (_offloaded(model, name) if t.device.type == "meta" else t)
