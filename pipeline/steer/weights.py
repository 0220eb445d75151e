"""Steering written into weights: a model that does what traitlens's hooks do, with no hook.

- :func:`with_pushes` (additive): each push ``alpha * norm_L * unit(v)`` on block L's output
  becomes a bias on one of block L's output projections (:mod:`~traitlens.pipeline.model.writers`).
  Its output is added to the residual stream as it is, so block L's output moves by that
  constant vector at every position and nothing before block L changes: the hook's push.
- :func:`orthogonalised` (ablation, as Arditi et al. and heretic do it): every matrix that
  writes into the residual stream, and its bias, loses its component in the span of the
  directions, ``W <- (I - U U^T) W`` (``U`` ``[d, k]`` orthonormal), the embeddings
  ``E <- E (I - U U^T)``, in the chosen blocks (the embeddings optional), so no residual
  state holds a component along them: the weight form of
  :func:`~traitlens.pipeline.steer.steering.directional_ablation`.
- :func:`lora_factors`: the same ablation as rank-k LoRA factors per edited matrix, in peft's
  layout (``delta = B @ A``: ``B = U``, ``A = -U^T W``), for :func:`save_peft`.

Tied embeddings (SmolLM2's and GPT-2's LM head *is* the embedding matrix): orthogonalising the
shared matrix makes the head ``E (I - U U^T)`` too, so the logits also ignore the part of the
final norm's output along ``U``. The residual stream holds none of it, but the final norm's
per-dimension weights can put a little back; dropping it is one more ablation site, the
stream's last read, and still what the ablation means: the edited model neither writes nor
reads the direction. It is what the refusal-direction work released for its tied models (it
orthogonalises the shared matrix), it keeps the checkpoint's architecture and size, and it is
what peft's ``merge_and_unload`` makes of an embedding adapter on a tied model. The
self-check's reference hook includes that site (``unembedding=True``), so its KL compares
like with like.

Edits are computed in float64 and written in the model's dtype, on a deep copy: the loaded
model stays as it was (the self-check steers it with the hook).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from traitlens.pipeline.model.loading import LoadedModel
from traitlens.pipeline.model.sites import find_blocks
from traitlens.pipeline.model.writers import Architecture, architecture, block_module, root_module
from traitlens.pipeline.steer.steering import Push, _unit


def push_vectors(pushes: list[Push]) -> dict[int, torch.Tensor]:
    """``{layer: the summed push [d]}`` (pushes at one layer add up), float64."""
    out: dict[int, torch.Tensor] = {}
    for p in pushes:
        if p.site != "resid" or p.positions != "all" or p.rows is not None:
            raise ValueError(f"{p.describe()}: a weight export carries pushes on the block output at every position")
        out[p.layer] = out.get(p.layer, 0) + (p.alpha * p.scale) * _unit(p.vector).double()
    return out


def _zero_bias(module: torch.nn.Linear) -> None:
    """Give a bias-free linear module a zero bias (what a config bias flag gives it when loaded)."""
    w = module.weight
    module.bias = torch.nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)


@torch.no_grad()
def with_pushes(lm: LoadedModel, pushes: list[Push]) -> tuple[torch.nn.Module, list[str]]:
    """(a copy of the model whose block outputs carry the pushes as biases, the names of the
    parameters it changed or added). Where the projection has no bias, the copy's config gets
    the architecture's bias flag and every module that flag adds a bias to gets a zero one, so
    the saved folder loads with no missing weight."""
    arch = architecture(lm.model, additive=True)
    model = copy.deepcopy(lm.model)
    n_blocks = len(find_blocks(model)[1])
    changed = []
    if arch.bias_flag is not None and not getattr(model.config, arch.bias_flag, False):
        setattr(model.config, arch.bias_flag, True)
        for layer in range(n_blocks):
            for path in (arch.push,) + arch.flag_siblings:
                _zero_bias(block_module(model, layer, path))
        changed.append(f"config.{arch.bias_flag} = true: zero biases on {', '.join((arch.push,) + arch.flag_siblings)} "
                       f"of every block")
    for layer, push in push_vectors(pushes).items():
        bias = block_module(model, layer, arch.push).bias
        bias.copy_((bias.double() + push.to(bias.device)).to(bias.dtype))
        changed.append(f"block {layer} {arch.push}.bias += push")
    return model, changed


def _writers(model: torch.nn.Module, arch: Architecture, blocks: list[int], embeddings: bool
             ) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every residual writer an ablation edits."""
    block_path = find_blocks(model)[0]
    out = [(p, root_module(model, p)) for p in arch.embeddings] if embeddings else []
    for layer in blocks:
        out += [(f"{block_path}.{layer}.{p}", block_module(model, layer, p)) for p in (arch.attn_out, arch.mlp_out)]
    return out


def _out_axis(module: torch.nn.Module, arch: Architecture) -> int:
    """The weight axis indexed by the residual dimension: columns of an embedding and of GPT-2's
    Conv1D ([in, out]), rows of nn.Linear ([out, in])."""
    return 1 if isinstance(module, torch.nn.Embedding) or arch.conv1d else 0


@torch.no_grad()
def orthogonalised(lm: LoadedModel, directions, blocks: list[int] | None = None, embeddings: bool = True
                   ) -> tuple[torch.nn.Module, list[str]]:
    """(a copy of the model with the span of ``directions`` removed from every residual writer
    of the chosen ``blocks`` (all if None) and, with ``embeddings``, the embeddings, the names
    of the edited parameters)."""
    from traitlens.pipeline.steer.steering import orthonormal

    arch = architecture(lm.model)
    model = copy.deepcopy(lm.model)
    chosen = list(range(len(find_blocks(model)[1]))) if blocks is None else blocks
    U = torch.as_tensor(orthonormal(directions))  # [d, k] float64
    P = torch.eye(U.shape[0], dtype=torch.float64) - U @ U.T  # the projection out of the span
    changed = []
    for name, module in _writers(model, arch, chosen, embeddings):
        W = module.weight
        w = W.detach().double().cpu()
        w = P @ w if _out_axis(module, arch) == 0 else w @ P
        W.copy_(w.to(W.dtype))
        changed.append(f"{name}.weight")
        if getattr(module, "bias", None) is not None:
            module.bias.copy_((P @ module.bias.detach().double().cpu()).to(module.bias.dtype))
            changed.append(f"{name}.bias")
    return model, changed


@torch.no_grad()
def lora_factors(lm: LoadedModel, directions, blocks: list[int] | None = None, embeddings: bool = True
                 ) -> dict[str, dict[str, torch.Tensor]]:
    """The ablation of :func:`orthogonalised` as LoRA factors, ``{module name: factors}`` with
    ``delta W = B @ A`` of rank k (the directions' span) in peft's layout:

    - linear (``[out, in]``; GPT-2's Conv1D is handled as its transpose): ``A = -U^T W`` ``[k, in]``,
      ``B = U`` ``[out=d, k]``, and ``bias`` the orthogonalised bias where the module has one;
    - embedding ``E`` ``[vocab, d]``: peft's delta is ``(B @ A)^T``, so ``A = -(E U)^T`` ``[k, vocab]``,
      ``B = U`` ``[d, k]``.
    """
    from traitlens.pipeline.steer.steering import orthonormal

    arch = architecture(lm.model)
    chosen = list(range(len(find_blocks(lm.model)[1]))) if blocks is None else blocks
    U = torch.as_tensor(orthonormal(directions))  # [d, k]
    out = {}
    for name, module in _writers(lm.model, arch, chosen, embeddings):
        w = module.weight.detach().double().cpu()
        if isinstance(module, torch.nn.Embedding):
            out[name] = {"A": -(w @ U).T, "B": U.clone()}
            continue
        w_out_in = w.T if arch.conv1d else w  # [d, in]
        f = {"A": -(U.T @ w_out_in), "B": U.clone()}
        if getattr(module, "bias", None) is not None:
            b = module.bias.detach().double().cpu()
            f["bias"] = b - U @ (U.T @ b)
        out[name] = f
    return out


def save_merged(model: torch.nn.Module, lm: LoadedModel, folder) -> None:
    """A complete Hugging Face folder: config, safetensors weights, generation config, tokenizer."""
    model.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))


@contextmanager
def quiet_peft():
    """Within the block, peft's warnings are silenced: it warns at length when an adapter touches
    tied embeddings, and the export says what matters there (apply it merged) once."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"peft(\.|$)")
        yield


@torch.no_grad()
def save_peft(lm: LoadedModel, factors: dict[str, dict[str, torch.Tensor]], folder) -> None:
    """A peft LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) holding
    ``factors`` (:func:`lora_factors`), for ``PeftModel.from_pretrained(base, folder)``.

    lora_alpha = r, so peft's scaling is 1 and ``B @ A`` is the whole delta. Changed biases
    (GPT-2's projections) travel whole with ``bias="lora_only"`` (peft saves the targeted
    modules' biases and loads them back); the embeddings' full matrices are not saved
    (``save_embedding_layers=False``): the adapter holds the rank-k factors only."""
    from peft import LoraConfig, get_peft_model

    r = next(iter(factors.values()))["B"].shape[1]
    arch = architecture(lm.model)
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(factors),
                        fan_in_fan_out=arch.conv1d, bias="lora_only" if any("bias" in f for f in factors.values())
                        else "none", base_model_name_or_path=lm.path or None)
    with quiet_peft():
        peft_model = get_peft_model(copy.deepcopy(lm.model), config)
    for name, f in factors.items():
        layer = peft_model.base_model.model.get_submodule(name)
        if "default" in getattr(layer, "lora_embedding_A", {}):
            A, B = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"]
        else:
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        A.copy_(f["A"].to(A.dtype))
        B.copy_(f["B"].to(B.dtype))
        if "bias" in f:
            bias = layer.get_base_layer().bias
            bias.copy_(f["bias"].to(bias.dtype))
    with quiet_peft():
        peft_model.save_pretrained(str(folder), save_embedding_layers=False)
