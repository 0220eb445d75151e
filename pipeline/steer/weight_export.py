"""Export steering as weights (``traitlens export --format merged|peft``), checked before it counts.

:func:`export_weights` writes the edited model (:mod:`.weights`) into a temporary folder beside
the output, loads it back as a user would (plain ``transformers``; ``peft`` on the base model
for an adapter, merged with ``merge_and_unload``) and compares it on the project's neutral
prompts (:data:`~.damage.NEUTRAL_PROMPTS`, those ``evaluate``'s damage measure reads) with
traitlens's own hook at the same settings:

- ``kl``: the mean over prompts, and over each prompt's positions, of
  KL(P_hook || P_export) in nats, at most :data:`KL_TOLERANCE`;
- ``effects``: per trait, the shift of the measure ``evaluate`` uses (an
  :class:`.evaluate.Evaluator` of ``check_kind`` on the trait's held-out prompts) under the
  hook and under the export; they agree when ``|export - hook| <= EFFECT_ATOL + EFFECT_RTOL *
  |hook|``. A trait without held-out prompts has no effect figure (null, with the reason).

Only then is the folder renamed into place with its card (:data:`CARD_FILE`, strict JSON);
otherwise the folder is removed and :class:`ExportCheckFailed` (exit 1) gives both figures.

``alpha`` means what it means to ``steer``: the push is ``alpha * norm_L * unit(v)``, where
``norm_L`` is :func:`.steering.mean_token_norm` of block L's output over the neutral prompts
(``norm`` typical or all), measured once and written into the card.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from traitlens.pipeline.model.loading import LoadedModel
from traitlens.store import strict_json
from traitlens.store.errors import InputError, TraitlensError
from traitlens.store.finite import vector_problem
from traitlens.store.vocabulary import OPERATIONS

KL_TOLERANCE = 1e-3  # nats, mean over the neutral prompts; a float32 export agrees to ~1e-7
EFFECT_RTOL, EFFECT_ATOL = 0.05, 1e-3  # the trait effect's agreement, relative to the hook's and absolute
CARD_FILE = "traitlens-export.json"
WEIGHT_FORMATS = ("merged", "peft")


class ExportCheckFailed(TraitlensError):
    """The exported weights do not steer like the hook (exit 1): nothing is left behind."""


def _neutral_batch(lm: LoadedModel):
    """(neutral prompts, chat, right-padded ids and mask on the CPU) for the norm and the check."""
    import torch

    from traitlens.pipeline.model.encode import render_ids, uses_chat
    from traitlens.pipeline.model.hooks import pad_batch, pad_token_id
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS

    chat = uses_chat(lm.tokenizer, None)
    seqs = [render_ids(lm.tokenizer, p, None, chat) for p in NEUTRAL_PROMPTS]
    ids, mask = pad_batch(seqs, pad_token_id(lm.tokenizer), "right", torch.device("cpu"))
    return list(NEUTRAL_PROMPTS), chat, ids, mask


def layer_norms(lm: LoadedModel, layers: list[int], norm: str = "typical") -> dict[int, float]:
    """``{layer: the mean token norm of block L's output over the neutral prompts}``: alpha's
    unit in every export (:func:`.steering.mean_token_norm`, the function ``steer`` uses)."""
    from traitlens.pipeline.steer.steering import mean_token_norm

    _, _, ids, mask = _neutral_batch(lm)
    return {l: mean_token_norm(lm, l, ids, mask, norm) for l in sorted(set(layers))}


def norm_source(norm: str) -> str:
    from traitlens.pipeline.steer.damage import NEUTRAL_PROMPTS

    return (f"mean L2 norm of block L's output over the tokens of traitlens's {len(NEUTRAL_PROMPTS)} neutral prompts "
            f"(pipeline/steer/damage.py), norm={norm}" + (" (massive-activation tokens left out)"
                                                          if norm == "typical" else ""))


def check_vectors(lm: LoadedModel, rows: list[dict]) -> None:
    """Refuse vectors of another model or width (InputError naming both), or whose values are not
    finite or all zero (an older traitlens stored such vectors)."""
    for r in rows:
        why = vector_problem(r["vector"])
        if why is not None:
            raise InputError(f"vector {r['vector_id']} ({r['trait']} {r['method']} L{r['layer']}) cannot be written into "
                             f"weights: {why} (an older traitlens stored it)")
        if r["model_key"] != lm.key:
            raise InputError(f"vector {r['vector_id']} ({r['trait']} {r['method']} L{r['layer']}) was made on model "
                             f"{r['model_key']}, and --model loads {lm.key}: a direction of one model means nothing in "
                             "another's weights; pass the --model the store's vectors were extracted with")
        if len(r["vector"]) != lm.d_model:
            raise InputError(f"vector {r['vector_id']} has width {len(r['vector'])}; {lm.key} has width {lm.d_model}")
        if not 0 <= r["layer"] < lm.n_layers:
            raise InputError(f"vector {r['vector_id']} is at layer {r['layer']}; {lm.key} has layers 0-{lm.n_layers - 1}")


def _load_export(lm: LoadedModel, folder: Path, fmt: str) -> LoadedModel:
    """The export loaded as a user would, on ``lm``'s device and dtype, with no traitlens code
    in the model: the merged folder by plain transformers (its own tokenizer too), an adapter
    by peft on the base model (unmerged: ``PeftModel``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = next(lm.model.parameters()).dtype
    if fmt == "merged":
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(lm.path, dtype=dtype, local_files_only=True)
        model, tok = PeftModel.from_pretrained(base, str(folder)), lm.tokenizer
    model.to(lm.device).eval()
    return LoadedModel(model=model, tokenizer=tok, name=folder.name, key="export", device=lm.device, path=str(folder))


def _effects(store, lm: LoadedModel, traits: list[str], reference, exported: LoadedModel, kind: str, n: int,
             norm: str) -> dict:
    """``{trait: {hook: shift row, export: shift row, agree}}`` or ``{trait: {reason}}``."""
    from traitlens.pipeline.steer.search import evaluator_for

    out = {}
    for trait in traits:
        if kind != "expression" and not getattr(lm.tokenizer, "chat_template", None):
            out[trait] = {"hook": None, "export": None, "agree": None, "reason": f"not measured: the {kind} measure "
                          "asks in the chat template and this tokenizer has none (--check-kind expression reads "
                          "replies without one)"}
            continue
        try:
            ev, what = evaluator_for(store, lm, trait, kind, n, norm, reply_tokens=0)
        except ValueError as e:  # (InputError is one) no held-out prompts, or no chat template for the measure
            out[trait] = {"hook": None, "export": None, "agree": None, "reason": f"not measured: {e}"}
            continue
        hook, export = ev.shift_under(hooks=reference()), ev.shift_under(model=exported)
        gap = abs(export["shift"] - hook["shift"])
        out[trait] = {"measure": what, "hook": hook, "export": export, "difference": gap,
                      "tolerance": EFFECT_ATOL + EFFECT_RTOL * abs(hook["shift"]),
                      "agree": bool(gap <= EFFECT_ATOL + EFFECT_RTOL * abs(hook["shift"]))}
    return out


def export_weights(store, lm: LoadedModel, rows: list[dict], out: Path, operation: str, fmt: str = "merged",
                   alpha: float | None = None, blocks: list[int] | None = None, embeddings: bool = True,
                   norm: str = "typical", check_kind: str = "persona", check_n: int = 16, log=print) -> dict:
    """Write, check and (if it steers like the hook) keep the export; returns its card.

    ``rows``: vectors rows (each pushed at, or ablated from, its own layer's direction);
    ``operation`` add (``alpha`` required) or ablate (``blocks``: the blocks edited, all if
    None; ``embeddings``: the embeddings too)."""
    from traitlens.pipeline.model.writers import architecture, ties_embeddings
    from traitlens.pipeline.steer import weights
    from traitlens.pipeline.steer.damage import next_token_kl_between
    from traitlens.pipeline.steer.steering import Push, ablated, pushes
    from traitlens.store.store import code_version

    if operation not in OPERATIONS or fmt not in WEIGHT_FORMATS:
        raise InputError(f"--operation {operation} --format {fmt}: use --operation add|ablate with --format merged|peft")
    if fmt == "peft" and operation == "add":
        raise InputError("--format peft carries an ablation (a low-rank weight change); a constant push is a bias, "
                         "which a LoRA adapter cannot add: use --format merged --operation add")
    if operation == "add" and (alpha is None or not np.isfinite(alpha)):
        raise InputError("--operation add needs a finite --alpha (the push, in units of the layer's mean token norm)")
    if not rows:
        raise InputError("no vectors to export")
    out = Path(out)
    if out.exists():
        raise InputError(f"-o {out} exists: a weight export writes a new folder and never overwrites one")
    if not out.parent.is_dir():
        raise InputError(f"-o {out}: the folder {out.parent} does not exist")
    check_vectors(lm, rows)
    arch = architecture(lm.model, additive=operation == "add")
    tied = ties_embeddings(lm.model)
    vectors = [{"vector_id": r["vector_id"], "trait": r["trait"], "method": r["method"], "layer": int(r["layer"])}
               for r in rows]
    if operation == "add":
        scales = layer_norms(lm, [r["layer"] for r in rows], norm)
        items = [Push(r["vector"], int(r["layer"]), float(alpha), scales[r["layer"]], label=r["trait"]) for r in rows]
        for v, p in zip(vectors, items):
            v.update({"alpha": float(alpha), "norm": p.scale, "push_norm": abs(p.alpha) * p.scale})
        reference = lambda: pushes(lm, items)  # noqa: E731
        edit = lambda: weights.with_pushes(lm, items)  # noqa: E731
    else:
        directions = [r["vector"] for r in rows]
        reference = lambda: ablated(lm, directions, blocks, embeddings)  # noqa: E731
        if fmt == "merged":
            edit = lambda: weights.orthogonalised(lm, directions, blocks, embeddings)  # noqa: E731
        else:
            edit = lambda: (weights.lora_factors(lm, directions, blocks, embeddings), None)  # noqa: E731

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        edited, changed = edit()
        if fmt == "merged":
            weights.save_merged(edited, lm, tmp)
        else:
            weights.save_peft(lm, edited, tmp)
            changed = [f"{name} (rank {f['B'].shape[1]} LoRA" + (", bias" if "bias" in f else "") + ")"
                       for name, f in sorted(edited.items())]
        del edited
        prompts, chat, _, _ = _neutral_batch(lm)
        log(f"wrote the {fmt} export; checking it against traitlens's hook on {len(prompts)} neutral prompts...")
        with weights.quiet_peft():
            exported = _load_export(lm, tmp, fmt)
        check = {"prompts": len(prompts), "loaded_with": "transformers AutoModelForCausalLM.from_pretrained(folder)"
                 if fmt == "merged" else "peft PeftModel.from_pretrained(base, folder).merge_and_unload()"}
        if fmt == "peft":  # as applied, and merged (they differ only where the embeddings are tied: see .weights)
            with weights.quiet_peft():
                merged = replace(exported, model=_load_export(lm, tmp, fmt).model.merge_and_unload())
            unmerged, kl = next_token_kl_between(lm, reference, [exported, merged], prompts, chat)
            check["kl_unmerged"], exported = float(unmerged.mean()), merged
        else:
            (kl,) = next_token_kl_between(lm, reference, [exported], prompts, chat)
        check.update({"kl": float(kl.mean()), "kl_max": float(kl.max()), "kl_tolerance": KL_TOLERANCE})
        traits = sorted({r["trait"] for r in rows})
        check["effects"] = _effects(store, lm, traits, reference, exported, check_kind, check_n, norm)
        agree = [e["agree"] for e in check["effects"].values() if e["agree"] is not None]
        check["passed"] = bool(check["kl"] <= KL_TOLERANCE and all(agree))
        card = strict_json.document({  # strict JSON: a measure that is not finite is null, and `nulls` says why
            "format": "traitlens weight export 1", "operation": operation, "export_format": fmt,
            "model_key": lm.key, "base_model": lm.path, "architecture": arch.model_type, "vectors": vectors,
            "norm_unit": norm_source(norm) if operation == "add" else None,
            "ablated_blocks": (None if operation == "add" else ("all" if blocks is None else blocks)),
            "ablated_embeddings": None if operation == "add" else embeddings,
            "tied_embeddings": tied, "edited": changed, "check": check, "code_version": code_version()})
        if not check["passed"]:
            raise ExportCheckFailed(f"the {fmt} export does not steer like traitlens's hook: {summary(card)}; "
                                    "nothing was written")
        (tmp / CARD_FILE).write_text(strict_json.dumps(card, indent=1))
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return card


def summary(card: dict) -> str:
    """One line of the check's figures: the KL and, per trait, the effect under hook and export."""
    c = card["check"]
    parts = [f"KL(hook || export) {c['kl']:.3g} nats mean over {c['prompts']} neutral prompts (tolerance "
             f"{c['kl_tolerance']:g})"]
    for trait, e in c["effects"].items():
        if e["agree"] is None:
            parts.append(f"{trait} effect {e['reason']}")
        else:
            parts.append(f"{trait} effect ({e['hook']['kind']}) hook {e['hook']['shift']:+.4f}, export "
                         f"{e['export']['shift']:+.4f} (|difference| {e['difference']:.2g}, tolerance "
                         f"{e['tolerance']:.2g})")
    return "; ".join(parts)
