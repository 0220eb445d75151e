"""The names traitlens is made of, defined once: what a user types (CLI choices, spec values),
what the store records (table names, group keys) and what validators accept.

It lives in ``store`` because the store, the bottom floor, records these names (table folders,
``GroupKey`` fields, the ``kind`` and ``method`` columns), and every floor above may import
it. Nothing else spells these lists out: the CLI's ``click.Choice`` and help texts, the spec
checks, the validators, the Parquet schemas and the SQL views read them here, and
``tests/test_vocabulary.py`` holds the rest (the estimators, the measures, the schemas, the
views, the CLI choices) to them. Adding a method, a pooling, a site or a kind starts here.
"""

from __future__ import annotations

# the tables of a store: one folder of Parquet parts each under tables/ (schemas in tables.py)
TABLE_NAMES = ("prompts", "rows", "runs", "vectors", "steering", "trajectories", "scores", "replies",
               "steering_samples", "lens", "conditions", "steering_together", "capability")

# how prompts were rendered for the model (GroupKey.fmt): the same text gives different
# activations with and without a chat template, so the two never share an array
FORMATS = ("chat", "raw")

# how a prompt's tokens become one stored row (GroupKey.pooling); tokens: one row per token
POOLINGS = ("last", "mean", "response_mean", "assistant_mean", "tokens")
DEFAULT_POOLINGS = ("last", "mean")  # `ingest --pooling` and a spec's capture.poolings when not given
# computed from a prompt's own hidden states alone: what a TransformerLens / nnsight cache
# gives (interop) and how a condition vector reads a prompt
PROMPT_POOLINGS = ("last", "mean")

# hook points named the same on every architecture; capture also takes a dotted module path
NAMED_SITES = ("resid", "attn_out", "mlp_out")

# the built-in estimators, in the order every grid shows them; random is the floor direction
# (never picked as a trait's vector), and `extract --methods all` fits every one
METHOD_NAMES = ("mean_diff", "pca_diff", "ica", "probe", "gradient", "random")

# causal measures of `evaluate --steering --kind` (the ``kind`` column of the steering tables)
EVALUATION_KINDS = ("persona", "refusal", "refusal_first_token", "expression", "refusal_rate")
# the loose refusal measure moves far more than the whole phrase does: it never outranks the
# strict kinds (the metrics view's steer_shift, export's steering picks, the report's default kind)
LOOSE_KIND = "refusal_first_token"

# what a vector does to the model: add it (a push), or project it out (directional ablation);
# `export --operation` and the ``operation`` column of the steering table
OPERATIONS = ("add", "ablate")

# the KL divergence every damage figure reports (`evaluate --kl`): the mean over every position
# of each neutral prompt (the default), or at the reply's first token only (heretic's)
KL_MEASURES = ("all-positions", "first-token")

# alpha's unit: the mean token norm without massive-activation tokens (typical) or over all
NORMS = ("typical", "all")

# which token positions a push touches; besides these, ``A:B`` (positions A to B-1)
POSITIONS = ("all", "generated", "prompt", "last-prompt")

# `traitlens export --format`
EXPORT_FORMATS = ("safetensors", "gguf", "easysteer", "merged", "peft")

# a vector bundle (`traitlens bundle`; the format: pipeline/extract/bundle.py): its card, its
# vectors, its reproduce file, and the Parquet evidence under evidence/ (capability: only where
# the vectors' capability damage was measured)
BUNDLE_CARD, BUNDLE_VECTORS, BUNDLE_REPRODUCE, BUNDLE_EVIDENCE_DIR = (
    "README.md", "vectors.safetensors", "reproduce.json", "evidence")
BUNDLE_EVIDENCE = ("metrics", "steering", "capability", "prompts")
# the capability-damage table (`evaluate --capability`); bundles take its rows where they exist
CAPABILITY_TABLE = "capability"

# what `traitlens reproduce` says of a refit against its bundle (exit 0 for the first two)
VERDICTS = ("identical", "within tolerance", "differs")

# the splits a prompt is in (the prompts table's ``split``): extract fits on train and judges on
# val (or test); ingest gives every split of a labelled (trait, dataset, label) at least
# MIN_PER_SPLIT prompts once it has that many for each (pipeline/capture/splits.py), the least a
# fit or a held-out AUROC is computed from
SPLIT_NAMES = ("train", "val", "test")
MIN_PER_SPLIT = 2
