"""``traitlens reproduce DIR``: refit a bundle's vectors from its prompts and say whether they come
out the same.

Every file's SHA-256 is checked first (:func:`~traitlens.pipeline.extract.bundle.verify`: a
missing or changed file stops everything, exit 2, naming it). Then, in a store (a fresh
temporary one by default): the bundle's prompts that the store lacks are captured with the
recorded model (its key must be the bundle's: same config and weights), settings (chat format,
batch size, token budget, padding side, length limit, device, dtype) and row order; each
extract run that made a bundled vector is run again with its recorded config (methods, params,
bootstrap count, seed, memory budget, splits, ``--where``) on the bundle's prompts alone, at the
bundle's layers, recomputed even where the store holds the same vector ids.

Each bundled vector is compared with its refit (same method and layer): the cosine, whether its
float32 bytes are the same, and every held-out metric. The verdict (:data:`VERDICTS`):
``identical`` (every vector's bytes and every metric equal), ``within tolerance``
(:data:`TOLERANCE`), or ``differs``; the CLI exits 0 for the first two only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from traitlens.store import GroupKey, Store
from traitlens.store.layout import format_layer_list
from traitlens.store.vocabulary import VERDICTS

from traitlens.pipeline.extract.bundle import Bundle, BundleError, model_mismatch, open_bundle

IDENTICAL, WITHIN, DIFFERS = VERDICTS
# what "within tolerance" allows: the vector's direction, the bounded metrics (absolute), the
# unbounded ones (relative to the bundle's value, at least 1); counts and the fingerprint never move
TOLERANCE = {"cosine": 1e-4, "bounded": 0.01, "relative": 0.01}
BOUNDED = ("auroc", "balanced_accuracy", "train_auroc", "stability", "agreement", "floor_length", "floor_dataset",
           "p_value")
UNBOUNDED = ("cohens_d", "separation", "threshold", "raw_norm")
EXACT = ("n_pos", "n_neg", "n_held_pos", "n_held_neg", "held_split", "fingerprint")


@dataclass
class VectorMatch:
    """One bundled vector against its refit."""

    vector_id: str
    method: str
    layer: int
    refit_id: str | None = None
    cosine: float | None = None
    same_bytes: bool = False
    metrics: dict = field(default_factory=dict)  # name -> {"bundle", "refit", "difference", "ok"}
    verdict: str = DIFFERS
    why: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Reproduction:
    bundle: str
    store: str
    kept: bool  # the store stays (given by --store) or was a temporary one, now deleted
    captured: int
    vectors: list[VectorMatch]
    notes: list[str]

    @property
    def verdict(self) -> str:
        found = {m.verdict for m in self.vectors}
        return DIFFERS if DIFFERS in found or not found else WITHIN if WITHIN in found else IDENTICAL

    @property
    def matches(self) -> bool:
        return self.verdict != DIFFERS

    def as_dict(self) -> dict:
        return {"bundle": self.bundle, "store": self.store, "store_kept": self.kept, "captured": self.captured,
                "verdict": self.verdict, "tolerance": TOLERANCE, "vectors": [v.as_dict() for v in self.vectors],
                "notes": self.notes}


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN (a metric not measurable: stability with --n-boot 0)
    return a == b


def compare(bundled: dict, refit: dict | None) -> VectorMatch:
    """How a refit compares with the bundled vector (a vectors row with ``vector`` each)."""
    m = VectorMatch(bundled["vector_id"], bundled["method"], int(bundled["layer"]))
    if refit is None:
        m.why = "no refit of this method and layer"
        return m
    a = np.asarray(bundled["vector"], np.float32)
    b = np.asarray(refit["vector"], np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    m.refit_id = refit["vector_id"]
    if a.shape != b.shape:
        m.why = f"width {b.shape[0]} against the bundle's {a.shape[0]}"
        return m
    m.cosine = float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30))
    m.same_bytes = a.tobytes() == b.tobytes()
    exact, close = m.same_bytes, m.cosine >= 1 - TOLERANCE["cosine"]
    for name in BOUNDED + UNBOUNDED + EXACT:
        x, y = bundled.get(name), refit.get(name)
        same = same_value(x, y)
        if name in EXACT or same or x is None or y is None or not np.isfinite([x, y]).all():
            ok = same
            diff = None if same or not isinstance(x, (int, float)) or not isinstance(y, (int, float)) else y - x
        else:
            diff = float(y - x)
            limit = TOLERANCE["bounded"] if name in BOUNDED else TOLERANCE["relative"] * max(1.0, abs(x))
            ok = abs(diff) <= limit
        m.metrics[name] = {"bundle": x, "refit": y, "difference": diff, "ok": ok}
        exact &= same
        close &= ok
    m.verdict = IDENTICAL if exact else WITHIN if close else DIFFERS
    if m.verdict == DIFFERS:
        bad = [k for k, v in m.metrics.items() if not v["ok"]]
        m.why = (f"cosine {m.cosine:.6f} below {1 - TOLERANCE['cosine']}" if m.cosine < 1 - TOLERANCE["cosine"]
                 else "") + ("; " if bad and m.cosine < 1 - TOLERANCE["cosine"] else "") + (
            f"{', '.join(bad)} outside the tolerance" if bad else "")
    return m


def _corpus_file(bundle: Bundle, ids: set[str], folder: Path) -> Path:
    """The bundle's prompt records of ``ids`` as a JSONL corpus, in the group's row order (so
    that a fresh capture batches them as the original did), labels and splits explicit."""
    table = bundle.table("prompts")
    path = folder / f"{bundle.path.name}-prompts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in table.to_pylist():
            if r["prompt_id"] not in ids:
                continue
            rec = {"messages": json.loads(r["messages"])} if r["messages"] is not None else {"text": r["text"]}
            rec.update({"label": int(r["label"]), "trait": r["trait"], "dataset": r["dataset"], "split": r["split"]})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def _device(recorded: str | None, asked: str | None) -> tuple[str, str | None]:
    """(the device to capture on, a note when it is not the recorded one)."""
    if asked:
        return asked, None if asked == recorded else f"captured on --device {asked}; the bundle's on {recorded}"
    if not recorded:
        return "auto", "the bundle records no capture device: captured on auto"
    kind = recorded.split(":")[0]
    import torch

    here = kind == "cpu" or (kind == "cuda" and torch.cuda.is_available()) or (
        kind == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    return (recorded, None) if here else ("auto", f"the bundle was captured on {recorded}, which this machine lacks: "
                                                  "captured on auto (expect within tolerance, not identical)")


def capture(bundle: Bundle, store_path, model: str | None, device: str | None, notes: list[str], log) -> int:
    """Capture the bundle's prompts the store lacks (in the vectors' group) with the recorded
    model and settings; returns how many were captured."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from traitlens.pipeline.capture.ingest import ingest
    from traitlens.pipeline.capture.settings import IngestConfig
    from traitlens.pipeline.model.loading import load_model

    rec = bundle.reproduce
    g = rec["group"]
    key = GroupKey(g["model_key"], g["fmt"], g["site"], g["pooling"])
    ids = rec["corpus"]["prompt_ids"]
    store = Store.open(store_path) if Store.exists(store_path) else None
    have = store.group_rows(key, ["row", "prompt_id"])["prompt_id"].combine_chunks() if store else pa.array([], pa.string())
    missing = set(pc.filter(pa.array(ids, pa.string()), pc.invert(pc.is_in(pa.array(ids, pa.string()),
                                                                            value_set=have))).to_pylist())
    table = bundle.table("prompts")
    if table is None or "text" not in table.column_names:
        if missing:
            raise BundleError(f"{bundle.path} holds its prompts' ids and hashes only (bundled with --no-prompts) and "
                              f"the store lacks {len(missing)} of them in {key.path}: ingest the original corpus into a "
                              "store with the recorded model, then `traitlens reproduce DIR --store` that store")
        return 0
    if store is not None:  # the store's labels must be the bundle's: a relabel would change the fit (and the store)
        wanted = [{"prompt_id": r["prompt_id"], "dataset": r["dataset"], "trait": r["trait"], "label": r["label"],
                   "split": r["split"]} for r in table.to_pylist()]
        _, changed = store.prompt_changes(wanted)
        if changed:
            raise BundleError(f"the store {store_path} labels {len(changed)} of the bundle's prompts otherwise (e.g. "
                              f"{changed[0]['prompt_id']}); nothing was written: reproduce into a fresh store")
    if not missing:
        return 0
    settings = rec["capture"]["settings"]
    spec = model if model is not None else bundle.model_spec()
    dev, note = _device(settings.get("device"), device)
    if note:
        notes.append(note)
    dtype = settings.get("dtype") or "auto"
    lm = load_model(spec, dev, dtype, log=log)
    if lm.key != key.model_key:
        raise BundleError(model_mismatch(key.model_key, lm.key))
    weights = rec["model"].get("weights")
    if weights:
        from traitlens.workflows.bundles import checkpoint_hashes

        here = checkpoint_hashes(spec)
        if here is not None and here["sha256"] != weights["sha256"]:
            notes.append("the checkpoint's files hash otherwise than the bundle's (same model key: same config and "
                         "sampled weights; re-saved or re-sharded?)")
    layers = rec["vectors"] and sorted({v["layer"] for v in rec["vectors"]})
    if store is not None and store.layers(key):
        layers = store.layers(key)  # a group's layers are fixed once it holds rows
    cfg = IngestConfig(model=spec, sites=[key.site], poolings=[key.pooling], layers=format_layer_list(layers),
                       chat=settings.get("chat"), generate=settings.get("generate") or 0,
                       batch_size=settings.get("batch_size") or 32, max_tokens=settings.get("max_tokens") or 16384,
                       padding_side=settings.get("padding_side") or "right", max_length=settings.get("max_length"),
                       device=dev, dtype=dtype)
    log(f"capturing {len(missing)} prompts with {lm.key} on {lm.device} ({dtype}), layers {format_layer_list(layers)}")
    with tempfile.TemporaryDirectory(prefix="traitlens-reproduce-corpus-") as tmp:
        corpus = _corpus_file(bundle, missing, Path(tmp))
        res = ingest(store_path, [corpus], cfg=cfg, lm=lm, progress=False, log=log)
    return res.n_captured


def refit(bundle: Bundle, store_path, log=lambda *a: None) -> dict[tuple[str, int], dict]:
    """Run each extract run that made a bundled vector again with its recorded config, on the
    bundle's prompts at the bundle's layers; ``{(method, layer): refit record}``."""
    from traitlens.pipeline.extract.config import ExtractConfig
    from traitlens.pipeline.extract.jobs import extract

    rec = bundle.reproduce
    g = rec["group"]
    ids = set(rec["corpus"]["prompt_ids"])
    runs = {r["run_id"]: r for r in rec["extract"]["runs"]}
    by_run: dict[str, list[dict]] = {}
    for v in bundle.records:
        by_run.setdefault(v["run_id"], []).append(v)
    out = {}
    for run_id, vecs in by_run.items():
        cfg = (runs.get(run_id) or {}).get("config")
        head = vecs[0]
        if not cfg:  # no run record: what the vector itself records
            cfg = {"methods": sorted({v["method"] for v in vecs}), "params": {}, "where": head["where_sql"]}
        ecfg = ExtractConfig(methods=list(cfg["methods"]), params=cfg.get("params") or {},
                             n_boot=int(cfg.get("n_boot", rec["extract"]["n_boot"])),
                             seed=int(cfg.get("seed", rec["extract"]["seed"])),
                             memory_budget=int(cfg.get("memory_budget") or ExtractConfig().memory_budget))
        log(f"refitting {', '.join(ecfg.methods)} at layers {format_layer_list({int(v['layer']) for v in vecs})} as "
            f"run {run_id} did")
        res = extract(store_path, rec["trait"], None, format_layer_list({int(v["layer"]) for v in vecs}),
                      g["model_key"], g["fmt"], g["site"], g["pooling"], cfg.get("train_split") or "train",
                      head["held_split"], prompt_ids=ids, where=cfg.get("where"), cfg=ecfg, skip_unchanged=False)
        for r in res.records:
            out[(r["method"], int(r["layer"]))] = r
    return out


def reproduce(bundle_dir, store_path=None, model: str | None = None, device: str | None = None,
              log=lambda *a: None) -> Reproduction:
    """Verify, capture what is missing, refit, compare (see the module docstring)."""
    from traitlens.store.store import code_version
    from traitlens.workflows.bundles import corpus_sha256

    bundle = open_bundle(bundle_dir)  # every hash, before anything else is read or written
    notes = []
    rec = bundle.reproduce
    prompts = bundle.table("prompts")
    if prompts is not None and corpus_sha256(prompts) != rec["corpus"]["sha256"]:
        raise BundleError(f"{bundle.path}: the prompts hash to another corpus than reproduce.json records")
    made = rec["traitlens"]
    if made.get("version") != code_version():
        notes.append(f"the bundle was made with traitlens {made.get('version')}, this is {code_version()}: vector "
                     "ids differ (they hash the code version); the values may not")
    kept = store_path is not None
    tmp = None
    if store_path is None:
        tmp = Path(tempfile.mkdtemp(prefix="traitlens-reproduce-"))
        store_path = tmp / "store"
    try:
        captured = capture(bundle, store_path, model, device, notes, log)
        beside = rec["capture"].get("other_prompts_in_its_runs")
        if captured and beside:
            notes.append(f"the bundle's prompts were captured beside {beside} others in their ingest runs, so their "
                         "batches held other prompts than here; a batch's shape changes float rounding, so expect "
                         "within tolerance rather than identical (ICA can move further: docs/bundles.md)")
        refits = refit(bundle, store_path, log)
        matches = [compare(v, refits.get((v["method"], int(v["layer"])))) for v in bundle.records]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return Reproduction(str(bundle.path), str(store_path), kept, captured, matches, notes)
