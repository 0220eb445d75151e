"""A ``traitlens`` model for lm-evaluation-harness: any lm-eval task, on a model steered by stored vectors.

    lm-eval run --model traitlens --model_args pretrained=MODEL,store=STORE,vector=refusal,layer=12,alpha=0.1 \\
        --tasks hellaswag
    traitlens lm-eval --model traitlens --model_args ... --tasks ...   # registers it, then lm-eval's own CLI

:class:`TraitlensLM` is lm-eval's Hugging Face model (``HFLM``) with traitlens's hooks entered
around every forward pass it scores (``loglikelihood``, ``loglikelihood_rolling``) and every
generation (``generate_until``), so every task type runs as it does on ``--model hf``. Its
``model_args``, besides every ``hf`` one:

- ``pretrained``: a folder, a Hugging Face id, or ``default`` / left out (SmolLM2-135M-Instruct),
  loaded by ``HFLM`` itself exactly as ``--model hf`` loads it;
- ``store`` and ``vector``: ``TRAIT_OR_ID[:LAYER[:ALPHA]]``, several joined by ``+`` (they add
  up); a trait names its pick (``rank``'s first row; ``method`` and ``layer`` narrow it);
- ``layer``, ``alpha`` (default 0), ``site`` (resid, attn_out, mlp_out), ``positions``
  (all, generated, prompt, last-prompt, A:B), ``norm`` (alpha's unit: the mean token norm of the
  layer over traitlens's neutral prompts, the unit ``export`` writes; ``scale`` gives it instead);
- ``ablate=true``: project the vectors out of the residual stream everywhere instead (directional
  ablation, what ``export --operation ablate`` writes into the weights).

At ``alpha=0`` (or without a vector) no hook is entered: the forward passes are ``HFLM``'s own,
so the scores equal ``--model hf``'s exactly. A loglikelihood request scores its context and
continuation in one pass, so there the positions ``generated``, ``prompt`` and ``last-prompt``
have no meaning and are refused (``all`` and ``A:B`` count from the first token).

lm-eval resolves ``--model`` by its registry. Importing this module registers the model
(:func:`register`); lm-eval releases that read the ``lm_eval.models`` entry points find it
through traitlens's own (``pyproject.toml``); ``traitlens lm-eval`` registers it before handing
every argument to lm-eval's CLI, which works with any 0.4.x release.
"""

from __future__ import annotations

from traitlens.store.errors import InputError
from traitlens.store.vocabulary import NAMED_SITES, NORMS

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

NAME = "traitlens"  # `--model traitlens`
LOGLIKELIHOOD_POSITIONS = ("all",)  # besides A:B: the selectors a one-pass score can honour


def _push_specs(vector: str, alpha: float) -> list[tuple[str, int | None, float]]:
    """``(name, layer or None, alpha)`` of each ``TRAIT_OR_ID[:LAYER[:ALPHA]]`` in ``vector``
    (joined by ``+``); InputError naming the spec that does not parse."""
    out = []
    for spec in str(vector).split("+"):
        parts = spec.strip().split(":")
        try:
            if len(parts) > 3 or not parts[0]:
                raise ValueError
            at = int(parts[1]) if len(parts) > 1 and parts[1] else None
            a = float(parts[2]) if len(parts) > 2 and parts[2] else float(alpha)
        except ValueError:
            raise InputError(f"model_args vector={vector!r}: use TRAIT_OR_ID[:LAYER[:ALPHA]], several joined by +, "
                             "e.g. vector=refusal:12:0.1+sentiment:10:-0.05") from None
        out.append((parts[0], at, a))
    return out


def stored_pushes(lm, store, vector: str, layer: int | None = None, alpha: float = 0.0, method: str | None = None,
                  site: str = "resid", positions: str = "all", norm: str = "typical", scale: float | None = None):
    """(the :class:`.steering.Push` es ``vector`` names in ``store``, the vectors rows behind
    them). Each push's unit is the mean token norm of its layer over the neutral prompts (as
    ``export`` writes it), or ``scale``. InputError for a vector the store lacks, one made on
    another model, or a site, positions or norm traitlens does not know."""
    from traitlens.pipeline.steer.steering import Push, check_positions
    from traitlens.pipeline.steer.weight_export import check_vectors, layer_norms
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import named_vector
    from traitlens.store import Store

    if site not in NAMED_SITES:
        raise InputError(f"model_args site={site!r}: use one of {', '.join(NAMED_SITES)}")
    if norm not in NORMS:
        raise InputError(f"model_args norm={norm!r}: use one of {', '.join(NORMS)}")
    try:
        check_positions(str(positions))
    except ValueError as e:
        raise InputError(f"model_args positions: {e}") from None
    if store is None:
        raise InputError("model_args vector=... needs store=PATH (the traitlens store that holds the vector)")
    specs = _push_specs(vector, alpha)
    rows = []
    with StoreSQL(Store.open(store)) as q:
        for name, at, _ in specs:
            v = named_vector(q, name, lm.key, at if at is not None else layer, method)
            if v is None:
                raise InputError(f"model_args vector: no vector {name!r} (a vector id or a trait) on model {lm.key} in "
                                 f"{store}; `traitlens rank --trait TRAIT` lists what is stored")
            rows.append(v)
    check_vectors(lm, rows)
    where = [at if at is not None else (layer if layer is not None else v["layer"]) for (_, at, _), v in zip(specs, rows)]
    bad = [l for l in where if not 0 <= l < lm.n_layers]
    if bad:
        raise InputError(f"model_args layer {bad[0]}: {lm.key} has layers 0-{lm.n_layers - 1}")
    units = layer_norms(lm, where, norm) if scale is None else {l: float(scale) for l in where}
    items = [Push(v["vector"], l, a, units[l], site, str(positions), label=f"{v['trait']} {v['method']} ({v['vector_id']})")
             for (_, _, a), v, l in zip(specs, rows, where)]
    return items, rows


@register_model(NAME)
class TraitlensLM(HFLM):
    """lm-eval's ``HFLM`` steered by traitlens (see the module). ``intervention``: a function
    ``(pad) -> context manager`` entered around each scored forward pass and each generation
    (``pad``: each row's left padding, or None), or None for the plain model; ``describe`` says
    what it is. Programmatic use passes ``pretrained`` a loaded traitlens model (``LoadedModel``)
    and sets :meth:`steer` between evaluations, so one model serves every setting."""

    def __init__(self, pretrained=None, store: str | None = None, vector: str | None = None, layer: int | None = None,
                 alpha: float = 0.0, method: str | None = None, site: str = "resid", positions: str = "all",
                 norm: str = "typical", scale: float | None = None, ablate: bool = False, **kwargs):
        from traitlens.pipeline.model.loading import LoadedModel, model_fingerprint, resolve_model_path
        from traitlens.store.layout import safe_name

        if isinstance(pretrained, LoadedModel):
            self.lm = pretrained
            super().__init__(pretrained=pretrained.model, tokenizer=pretrained.tokenizer, **kwargs)
        else:
            path, name = resolve_model_path(None if pretrained in (None, "", "default") else str(pretrained))
            super().__init__(pretrained=path, **kwargs)
            self.lm = LoadedModel(model=self.model, tokenizer=self.tokenizer, name=name,
                                  key=f"{safe_name(name, 'model name')}-{model_fingerprint(self.model)}",
                                  device=self.model.device, path=path)
        self.intervention, self.describe, self.positions = None, "unsteered", "all"
        if vector is not None:
            items, rows = stored_pushes(self.lm, store, str(vector), layer, float(alpha), method, site, positions, norm,
                                        scale)
            if ablate:
                self.ablate([r["vector"] for r in rows], "ablated: " + ", ".join(p.label for p in items))
            else:
                self.steer(items)

    def steer(self, items: list) -> None:
        """Push ``items`` (:class:`.steering.Push` es) from now on; none, or all at alpha 0: the
        plain model (no hook at all)."""
        from traitlens.pipeline.steer.steering import pushes

        live = [p for p in items if p.alpha != 0]
        if not live:
            self.intervention, self.describe, self.positions = None, "unsteered (alpha 0: no hook)", "all"
            return
        lm = self.lm
        self.intervention = lambda pad=None: pushes(lm, live, pad)  # noqa: E731
        self.describe = "; ".join(p.describe() for p in live)
        self.positions = next((p.positions for p in live if p.positions != "all"), "all")

    def ablate(self, directions: list, describe: str = "ablated") -> None:
        """Project ``directions`` out of the residual stream everywhere from now on (directional ablation)."""
        from traitlens.pipeline.steer.steering import ablated

        lm = self.lm
        self.intervention = lambda pad=None: ablated(lm, directions)  # noqa: E731
        self.describe, self.positions = describe, "all"

    def use(self, intervention, describe: str, positions: str = "all") -> None:
        """Any intervention: a function ``(pad) -> context manager``, or None for the plain model."""
        self.intervention, self.describe, self.positions = intervention, describe, positions

    def _model_call(self, inps, attn_mask=None, labels=None):
        """The logits of one scored pass (context and continuation together, right-padded)."""
        if self.intervention is None:
            return super()._model_call(inps, attn_mask, labels)
        if self.positions not in LOGLIKELIHOOD_POSITIONS and not self.positions[:1].isdigit() \
                and not self.positions.startswith(":"):
            raise InputError(f"positions={self.positions}: a loglikelihood request scores its context and continuation "
                             "in one pass, so only positions=all or A:B (counted from the first token) apply; use "
                             f"{self.positions} with generation tasks only")
        with self.intervention(None):
            return super()._model_call(inps, attn_mask, labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        """One batch of generations (left-padded: each row's padding is read off its attention mask)."""
        if self.intervention is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        mask = generation_kwargs.get("attention_mask")
        pad = None if mask is None else (mask == 0).sum(dim=1).cpu()
        with self.intervention(pad):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)


def register() -> str:
    """Make ``--model traitlens`` known to lm-eval's registry (importing this module did); returns the name."""
    return NAME


def run_cli(args: list[str]) -> None:
    """lm-eval's own command line with ``args`` (``sys.argv`` set for it), the model registered first."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    register()
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
