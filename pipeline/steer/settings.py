"""Steering settings, torch-free: the CLI shows them as option defaults before torch is
imported, and :mod:`.evaluate` and :mod:`.search` read them from here (one home, no cycle).

:class:`SweepConfig` is the evaluation stage's config: ``traitlens evaluate --steering``'s
options, ``tl.evaluate``'s keywords and a spec's ``[evaluate]`` table; the search
(:func:`.search.sweep`) and the evaluator (:func:`.search.evaluator_for`) read it.
"""

from __future__ import annotations

import math
import os
import reprlib
from dataclasses import dataclass, field

from traitlens.queries.budget import KL_BUDGET
from traitlens.store.errors import InputError
from traitlens.store.finite import check_float
from traitlens.store.vocabulary import EVALUATION_KINDS, KL_MEASURES, METHOD_NAMES, NORMS

GRID_MAX = 40  # settings measured exhaustively up to this many; a larger grid is searched
TRIALS = 40  # settings the search measures by default
REPLY_TOKENS = 24  # length of the steered replies to neutral prompts that perplexity and distinct-2 read
# neutral prompts replied to (and read for perplexity) in one batch: the project's 32 at once. A
# decode step is many small operations, so on a CPU 4 batches of 8 cost far more than one of 32
REPLY_BATCH = 32
ALPHAS = (0.05, 0.1, 0.25, 0.5)  # the strengths a sweep measures by default (units of --norm)
N_TEXTS = 40  # held-out prompts the measure is taken on
EXPRESSION_TOKENS = 32  # reply length of --kind expression
ALPHA = 0.25  # `steer`'s strength, and an --add's without one (units of --norm)
STEER_TOKENS = 40  # reply length of `steer` and `monitor`
STEER_BATCH = 8  # prompts `steer` and `monitor` generate at once (the same replies as one at a time)
LAYERS_AROUND = 2  # the default layers on a GPU (or any accelerator): the detection pick's and this many on each side
LAYERS_AROUND_CPU = 0  # ... on a CPU: the detection pick's layer alone, so the defaults finish in minutes on 2 cores


def layers_around(device) -> int:
    """The default sweep's layers on each side of the detection pick's on ``device`` (a
    ``torch.device`` or its type name: ``cpu``, ``cuda``, ``mps``): :data:`LAYERS_AROUND_CPU` on
    the CPU, :data:`LAYERS_AROUND` on an accelerator. ``--layers`` overrides either. On a CPU a
    setting costs about 40 s of two cores on the default model (docs/benchmarks.md), so the
    default is the one layer detection picked; ``evaluate`` prints how to widen it."""
    return LAYERS_AROUND_CPU if str(getattr(device, "type", device)).split(":")[0] == "cpu" else LAYERS_AROUND


@dataclass
class SweepConfig:
    """What a steering sweep measures and how it picks.

    - ``kind``: the measure (:data:`~traitlens.store.vocabulary.EVALUATION_KINDS`);
    - ``methods`` x ``layers`` x ``alphas``: the grid. ``methods``: a list, a comma string or
      ``"all"`` (every stored method but random); ``layers``: ``all``, ``8-16,20``, a list, or
      None for the :data:`LAYERS_AROUND` layers on each side of the detection pick's;
      ``alphas``: strengths in units of the layer's mean token norm (``norm``);
    - ``n``: held-out prompts measured on; ``neutral``: the prompts of the damage measures (KL,
      replies; None: the project's own set); ``reply_tokens``: steered reply length for
      perplexity and distinct-2 (0: skip); ``max_new_tokens``: reply length of ``expression``;
    - ``kl``: which KL every damage figure is (:data:`~traitlens.store.vocabulary.KL_MEASURES`);
      ``markers``: the phrases that make a reply a refusal (``refusal_rate``; None: the built-in list);
    - ``kl_budget``: the pick is the largest shift whose mean KL stays within it (nats);
      ``capability_budget``: and whose worst fall on the ``capability`` lm-eval tasks stays within
      it (their own units; None: any). ``capability``: lm-eval tasks run unsteered and at every
      setting (``capability_include``: local task folders; ``capability_limit``: documents each);
    - ``ablate``: also project each swept vector out (directional ablation), beside random's;
    - ``trials``: settings Optuna measures when the grid has more than ``grid_max``; ``seed``
      seeds it and the random directions;
    - ``random_floor``: measure the random direction at the front and the pick;
    - ``early_stop``: a grid measures each (method, layer)'s alphas in ascending size and skips
      the larger ones once a setting's KL interval lies wholly above ``kl_budget`` (the KL grows
      with the push, so they cannot be the pick); the result says which were skipped;
    - ``judge``: a local chat model (path, or ``default``) rating each steered reply 0-100 for
      the trait, described by ``description`` (default: its name).
    """

    kind: str = EVALUATION_KINDS[0]
    methods: list[str] | str | None = field(default_factory=lambda: [METHOD_NAMES[0]])  # None: the default
    layers: str | int | list | None = None
    alphas: list[float] | str = field(default_factory=lambda: list(ALPHAS))
    n: int = N_TEXTS
    norm: str = NORMS[0]
    neutral: list[str] | None = None
    max_new_tokens: int = EXPRESSION_TOKENS
    reply_tokens: int = REPLY_TOKENS
    kl_budget: float = KL_BUDGET
    trials: int = TRIALS
    grid_max: int = GRID_MAX
    random_floor: bool = True
    early_stop: bool = True
    seed: int = 0
    judge: str | None = None
    description: str | None = None
    kl: str = KL_MEASURES[0]
    markers: list[str] | None = None
    ablate: bool = False
    capability: list[str] | str = field(default_factory=list)
    capability_include: list[str] = field(default_factory=list)
    capability_limit: int | None = None
    capability_budget: float | None = None

    def validate(self) -> "SweepConfig":
        """Check every setting before a model is loaded; normalises ``methods`` and ``alphas``
        given as comma strings to lists. Raises :class:`InputError` naming the option."""
        from traitlens.pipeline.model.layers import SiteError, parse_layers

        def count(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"--{name.replace('_', '-')} {reprlib.repr(v)}: must be an integer of at least {lo}")

        if self.kind not in EVALUATION_KINDS:
            raise InputError(f"--kind {reprlib.repr(self.kind)}: use {', '.join(EVALUATION_KINDS)}")
        if self.norm not in NORMS:
            raise InputError(f"--norm {reprlib.repr(self.norm)}: use {' or '.join(NORMS)} (alpha's unit)")
        if self.methods is None:
            self.methods = [METHOD_NAMES[0]]
        if isinstance(self.methods, str):
            self.methods = "all" if self.methods.strip() == "all" else [m.strip() for m in self.methods.split(",")
                                                                        if m.strip()]
        if self.methods != "all" and (not isinstance(self.methods, (list, tuple)) or not self.methods
                                      or not all(isinstance(m, str) and m for m in self.methods)):
            raise InputError(f"--methods {reprlib.repr(self.methods)}: give all or a list of method names")
        if self.methods != "all":
            self.methods = list(dict.fromkeys(self.methods))
        if self.layers is not None:
            try:  # the syntax now; that the model has these layers is checked once it is loaded
                parse_layers(self.layers, 100_000)
            except SiteError as e:
                raise InputError(str(e)) from None
        if isinstance(self.alphas, str):
            try:
                self.alphas = [float(a) for a in self.alphas.split(",") if a.strip()]
            except ValueError:
                raise InputError(f"--alphas {reprlib.repr(self.alphas)}: give a comma list of numbers, "
                                 "e.g. 0.1,0.25") from None
        if (not isinstance(self.alphas, (list, tuple))
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in self.alphas)):
            raise InputError(f"--alphas {reprlib.repr(self.alphas)}: give a list of numbers, e.g. [0.1, 0.25]")
        if not self.alphas:
            raise InputError("--alphas: give at least one strength")
        # the rule of every float option: finite, and within float32 (the activations' type)
        self.alphas = [check_float(a, f"--alphas[{i}]", float32=True) for i, a in enumerate(self.alphas)]
        for name, lo in (("n", 1), ("max_new_tokens", 1), ("reply_tokens", 0), ("trials", 1), ("grid_max", 1),
                         ("seed", 0)):
            count(name, lo)
        kl = self.kl_budget
        if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not math.isfinite(kl) or kl < 0:
            raise InputError(f"--kl-budget must be 0 or more nats (a finite number), got {reprlib.repr(kl)}")
        if not isinstance(self.random_floor, bool):
            raise InputError(f"--no-random: random_floor must be true or false, got {reprlib.repr(self.random_floor)}")
        if not isinstance(self.early_stop, bool):
            raise InputError(f"--no-early-stop: early_stop must be true or false, got {reprlib.repr(self.early_stop)}")
        if self.neutral is not None:
            if isinstance(self.neutral, str) or not all(isinstance(t, str) for t in self.neutral):
                raise InputError("--prompts: the neutral prompts must be a list of strings")
            self.neutral = [t.strip() for t in self.neutral if t.strip()]
            if not self.neutral:
                raise InputError("--prompts: no neutral prompts (one a line)")
        for name in ("judge", "description"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise InputError(f"--{name} {reprlib.repr(v)}: give a non-empty string")
        if self.kl not in KL_MEASURES:
            raise InputError(f"--kl {reprlib.repr(self.kl)}: use {' or '.join(KL_MEASURES)}")
        if self.markers is not None:
            if self.kind != "refusal_rate":
                raise InputError("--refusal-markers is for --kind refusal_rate")
            if isinstance(self.markers, str) or not all(isinstance(m, str) for m in self.markers):
                raise InputError("--refusal-markers: the markers must be a list of phrases")
            self.markers = [m.strip().lower() for m in self.markers if m.strip()]
            if not self.markers:
                raise InputError("--refusal-markers: no phrases (one a line)")
        if not isinstance(self.ablate, bool):
            raise InputError(f"--ablate must be true or false, got {reprlib.repr(self.ablate)}")
        if isinstance(self.capability, str):
            self.capability = [t.strip() for t in self.capability.split(",") if t.strip()]
        if not isinstance(self.capability, (list, tuple)) or not all(isinstance(t, str) for t in self.capability):
            raise InputError(f"--capability {reprlib.repr(self.capability)}: give a comma list of lm-eval tasks")
        include = self.capability_include or []
        if isinstance(include, (str, os.PathLike)):  # one folder, not its characters
            include = [include]
        if not isinstance(include, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in include):
            raise InputError(f"--capability-include {reprlib.repr(include)}: give a folder or a list of folders")
        self.capability, self.capability_include = list(self.capability), [str(p) for p in include]
        if self.capability_limit is not None:
            count("capability_limit", 1)
        cb = self.capability_budget
        if cb is not None and (isinstance(cb, bool) or not isinstance(cb, (int, float)) or not math.isfinite(cb)
                               or cb < 0):
            raise InputError(f"--capability-budget must be 0 or more (a finite number), got {reprlib.repr(cb)}")
        if (self.capability_include or self.capability_limit or cb is not None) and not self.capability:
            raise InputError("--capability-include, --capability-limit and --capability-budget go with "
                             "--capability TASKS")
        return self
