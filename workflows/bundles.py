"""Bundles from a store and bundles into a store: ``traitlens bundle`` gathers a trait's vectors
with their evidence and the record of how they were made (:func:`make_bundle`); the verbs that
take ``--vector DIR`` add a bundle's vectors and prompts to a store (:func:`adopt`);
``vectors --library`` lists the bundles under a folder (:func:`library`). The format on disk
is :mod:`traitlens.pipeline.extract.bundle`; ``reproduce`` is :mod:`.reproduce`.

What makes a bundle reproducible is read from the store, never guessed: the prompts are exactly
the rows whose fingerprint the vectors carry (checked: a store relabelled since is refused), the
capture settings are those of the ingest runs that committed those rows, the fit's those of the
extract run that made each vector (the ``runs`` table records every command's config).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from traitlens.store import GroupKey, Store
from traitlens.store.errors import InputError
from traitlens.store.layout import format_layer_list
from traitlens.store.tables import STEERING_SCHEMA, VECTORS_SCHEMA
from traitlens.store.vocabulary import CAPABILITY_TABLE, LOOSE_KIND, METHOD_NAMES

from traitlens.pipeline.extract.bundle import FORMAT, Bundle, BundleError, join_front_matter, open_bundle, write_bundle
from traitlens.pipeline.extract.bundle_card import card_body, front_matter
from traitlens.pipeline.steer.settings import ALPHA  # (torch-free)

LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "numpy", "scipy", "scikit-learn", "pyarrow",
             "zarr", "dask", "duckdb", "safetensors")
METRICS_SCHEMA = pa.schema([f for f in VECTORS_SCHEMA if f.name != "vector"])


# -- what a bundle records about where it was made -----------------------------------------------
def library_versions() -> dict[str, str | None]:
    """The installed version of every library that decides a vector's numbers (None: not installed)."""
    out = {"python": platform.python_version()}
    for pkg in LIBRARIES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def source_commit() -> dict:
    """The git commit of the traitlens source running (and whether it had uncommitted changes),
    or null with the reason when it is not a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None, "why": "traitlens is not running from a git checkout"}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as e:
        return {"commit": None, "dirty": None, "why": f"git could not be run ({type(e).__name__})"}


def checkpoint_hashes(spec: str | None) -> dict | None:
    """SHA-256 of every file of the model's checkpoint folder (the weights among them) and one
    hash over them all; None when the checkpoint is not on this machine."""
    from traitlens.pipeline.model.identity import checkpoint_folder

    folder = checkpoint_folder(spec)
    if folder is None:
        return None
    from traitlens.store.location import sha256_file

    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)}
    whole = hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in files.items()).encode()).hexdigest()
    return {"sha256": whole, "files": files}


def content_sha256(text: str | None, messages: str | None) -> str:
    """SHA-256 of a prompt's content, the payload its prompt id is the first 24 hex digits of."""
    payload = ("t:" + text if messages is None else
               "m:" + json.dumps(json.loads(messages), sort_keys=True, ensure_ascii=False))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def corpus_sha256(prompts: pa.Table) -> str:
    """One hash over the prompts a bundle's vectors were fitted on: their content hashes, datasets,
    labels and splits, sorted (computable from the ids-and-hashes table of a --no-prompts bundle)."""
    rows = sorted(zip(*(prompts[c].to_pylist() for c in ("prompt_id", "content_sha256", "dataset", "trait", "label",
                                                         "split"))))
    return hashlib.sha256("".join(json.dumps(list(r)) + "\n" for r in rows).encode()).hexdigest()


# -- the prompts a vector was fitted on -----------------------------------------------------------
def fitted_prompts(store: Store, key: GroupKey, trait: str, where: str | None, fingerprint: str) -> pa.Table:
    """The prompt records a vector's contrastive set read (its trait's labelled prompts that the
    group holds, those ``where`` selects), in the group's row order, with their row and content
    hash. Refused when they no longer make the vector's fingerprint (relabelled since)."""
    from traitlens.pipeline.extract.contrastive import fingerprint as rows_fingerprint

    p = store.table("prompts")
    p = p.filter(pc.and_(pc.equal(p["trait"], trait), pc.not_equal(p["label"], 0)))
    if where is not None:
        from traitlens.queries import select_prompt_ids

        p = p.filter(pc.is_in(p["prompt_id"], value_set=pa.array(sorted(select_prompt_ids(store, trait, where)),
                                                                  pa.string())))
    rows = store.group_rows(key, ["row", "prompt_id"])
    row_of = dict(zip(rows["prompt_id"].to_pylist(), rows["row"].to_pylist()))
    recs = [r for r in p.to_pylist() if r["prompt_id"] in row_of]
    last = {r["prompt_id"]: r for r in recs}  # one (label, split) per prompt: the last record, as extract reads it
    fp = rows_fingerprint(pa.array(list(last), pa.string()), [r["label"] for r in last.values()],
                          pa.array([r["split"] for r in last.values()], pa.string()))
    if fp != fingerprint:
        raise InputError(f"the store's {trait!r} prompts are no longer those the vector was fitted on (their "
                         f"fingerprint is {fp}, the vector's {fingerprint}: relabelled or re-split since); run "
                         f"`traitlens extract --trait {trait}` again and bundle the new vector")
    order = sorted(range(len(recs)), key=lambda i: (row_of[recs[i]["prompt_id"]], i))
    out = [{**{c: recs[i][c] for c in ("prompt_id", "text", "messages", "dataset", "trait", "label", "split")},
            "row": row_of[recs[i]["prompt_id"]], "content_sha256": content_sha256(recs[i]["text"], recs[i]["messages"])}
           for i in order]
    return pa.Table.from_pylist(out, schema=PROMPT_EVIDENCE)


PROMPT_EVIDENCE = pa.schema([("prompt_id", pa.string()), ("text", pa.string()), ("messages", pa.string()),
                             ("dataset", pa.string()), ("trait", pa.string()), ("label", pa.int8()),
                             ("split", pa.string()), ("row", pa.int64()), ("content_sha256", pa.string())])


# -- commands ------------------------------------------------------------------------------------
def ingest_command(cfg: dict, corpus: str = "CORPUS") -> str:
    """The ``traitlens ingest`` line with an ingest run's recorded settings."""
    parts = ["traitlens ingest", corpus, "--model", str(cfg.get("model_path") or cfg.get("model") or "default")]
    for opt, k in (("--site", "sites"), ("--pooling", "poolings")):
        parts += [opt, ",".join(cfg.get(k) or []) if opt == "--pooling" else " --site ".join(cfg.get(k) or [])]
    parts += ["--layers", format_layer_list(cfg.get("layers") or []) or "all"]
    for opt, k in (("--batch-size", "batch_size"), ("--max-tokens", "max_tokens"), ("--padding-side", "padding_side"),
                   ("--max-length", "max_length"), ("--generate", "generate"), ("--device", "device"),
                   ("--dtype", "dtype")):
        if cfg.get(k) not in (None, 0) or k == "batch_size":
            parts += [opt, str(cfg[k])]
    parts.append("--chat" if cfg.get("fmt") == "chat" else "--no-chat")
    return " ".join(parts)


def extract_command(cfg: dict, key: GroupKey) -> str:
    """The ``traitlens extract`` line with an extract run's recorded settings."""
    parts = ["traitlens extract --trait", _q(cfg["trait"]), "--methods", ",".join(cfg.get("methods") or []),
             "--layers", format_layer_list(cfg.get("layers") or []) or "all", "--model", key.model_key, "--fmt", key.fmt,
             "--site", key.site, "--pooling", key.pooling, "--n-boot", str(cfg.get("n_boot")), "--seed",
             str(cfg.get("seed")), "--memory", str(cfg.get("memory_budget"))]
    for opt, k in (("--train-split", "train_split"), ("--held-split", "held_split")):
        if cfg.get(k):
            parts += [opt, cfg[k]]
    probe = (cfg.get("params") or {}).get("probe") or {}
    if "C" in probe:
        parts += ["--C", str(probe["C"])]
    if "penalty" in probe:
        parts += ["--penalty", probe["penalty"]]
    if cfg.get("where"):
        parts += ["--where", _q(cfg["where"])]
    return " ".join(parts)


def _q(text: str) -> str:
    import shlex

    return shlex.quote(str(text))


def usage_commands(name: str, records: list[dict], picks: dict[str, dict], trait: str, model_spec: str | None) -> dict:
    """``{use: command}`` the card shows (run from the folder that holds the bundle ``name``), and
    ``{vector_id: {format: command}}`` for the deployable forms of each vector."""
    model = f" --model {_q(model_spec)}" if model_spec else ""
    head = records[0]
    out = {"steer": f"traitlens steer --vector {name} \"How should I spend my weekend?\"",
           "score": f"traitlens --store STORE score --vector {name} CORPUS.jsonl",
           "evaluate": f"traitlens --store STORE evaluate --steering --vector {name}",
           "reproduce": f"traitlens reproduce {name}"}
    per = {}
    for r in records:
        alpha = picks[r["vector_id"]]["alpha"] if r["vector_id"] in picks else ALPHA
        stem = f"{_safe(trait)}-{r['method']}-L{r['layer']}"
        gguf = "gguf" if int(r["layer"]) > 0 else "easysteer"  # (llama.cpp cannot steer block 0)
        per[r["vector_id"]] = {
            gguf: f"traitlens export --vector {name} --format {gguf} --method {r['method']} --layers {r['layer']}"
                  f"{model} --alpha {alpha:g} -o {stem}.gguf",
            "merged": f"traitlens export --vector {name} --format merged --operation add --vector-id {r['vector_id']} "
                      f"--alpha {alpha:g}{model} -o {stem}-merged",
            "peft": f"traitlens export --vector {name} --format peft --operation ablate --vector-id {r['vector_id']}"
                    f"{model} -o {stem}-ablate-peft"}
    out["gguf"] = per[head["vector_id"]].get("gguf") or per[head["vector_id"]]["easysteer"]
    out["merged"] = per[head["vector_id"]]["merged"]
    return {"use": out, "exports": per}


def _safe(text: str) -> str:
    from traitlens.store import file_stem

    return file_stem(text, "trait")


# -- bundle --------------------------------------------------------------------------------------
def chosen_records(store: Store, trait: str, vector_ids: list[str]) -> list[dict]:
    """The vectors to bundle: those ids (each of ``trait``), else the one `rank` lists first."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import chosen_vector

    out = []
    with StoreSQL(store) as q:
        for vid in vector_ids or [None]:
            v = chosen_vector(q, trait, vid)
            if v is None:
                raise InputError(f"--vector {vid}: no such vector (`traitlens vectors --trait {trait}` lists them)"
                                 if vid else f"no vector for trait {trait!r}; run `traitlens extract --trait {trait}`")
            if v["trait"] != trait:
                raise InputError(f"--vector {vid} is a vector of {v['trait']!r}, not of --trait {trait!r}")
            out.append(v)
    out = list({v["vector_id"]: v for v in out}.values())
    groups = {(v["model_key"], v["fmt"], v["site"], v["pooling"]) for v in out}
    if len(groups) > 1:
        raise InputError(f"the vectors come from {len(groups)} groups ({', '.join('/'.join(g) for g in sorted(groups))}): "
                         "a bundle holds one group's vectors; make one bundle per group")
    if len({(v["fingerprint"], v["where_sql"], v["held_split"]) for v in out}) > 1:
        raise InputError("the vectors were fitted on different prompt sets (fingerprint, --where or held-out split): "
                         "a bundle holds vectors of one set; make one bundle per set")
    for v in out:
        if v["method"] not in METHOD_NAMES:
            raise InputError(f"vector {v['vector_id']} is a {v['method']!r} vector (combined or imported), not fitted "
                             "by `traitlens extract`: nothing could refit it; bundle the vectors it was made from")
    return out


def run_records(store: Store, run_ids: list[str]) -> list[dict]:
    """The runs table's latest record of each run (config parsed), in the order given."""
    runs = {r["run_id"]: r for r in store.runs().to_pylist()}
    out = []
    for rid in run_ids:
        r = runs.get(rid)
        if r is None:
            out.append({"run_id": rid, "stage": None, "config": None, "why": "no record in the runs table"})
            continue
        out.append({"run_id": rid, "stage": r["stage"], "status": r["status"], "code_version": r["code_version"],
                    "started_at": r["started_at"], "ended_at": r["ended_at"], "config": json.loads(r["config"] or "{}")})
    return out


def steering_picks(rows: list[dict], vector_ids) -> dict[str, dict]:
    """``{vector_id: its steering pick}``: the largest shift within the KL budget, strict kinds only."""
    from traitlens.pipeline.steer.rule import pick

    out = {}
    for vid in vector_ids:
        p = pick([r for r in rows if r["vector_id"] == vid and r["kind"] != LOOSE_KIND])
        if p is not None:
            out[vid] = p
    return out


def random_aurocs(store: Store, records: list[dict]) -> dict[str, float | None]:
    """``{vector_id: held-out AUROC of the newest random vector of its cell's group and layer}``."""
    from traitlens.queries import StoreSQL
    from traitlens.queries.selection import best_vector

    out = {}
    with StoreSQL(store) as q:
        for r in records:
            v = best_vector(q, r["trait"], model_key=r["model_key"], layer=r["layer"], method="random")
            ok = v is not None and (v["fmt"], v["site"], v["pooling"], v["fingerprint"]) == (
                r["fmt"], r["site"], r["pooling"], r["fingerprint"])
            out[r["vector_id"]] = v["auroc"] if ok else None
    return out


def make_bundle(store_path, trait: str, vector_ids: list[str], out, prompts: bool = True,
                license_: str = "unknown") -> dict:
    """Write the bundle of ``trait``'s vectors (``vector_ids``, else its pick) to the new folder
    ``out``; returns ``{"files": {file: sha256}, "records", "reproduce", "picks", "front"}``."""
    out = Path(out)
    store = Store.open(store_path)
    records = chosen_records(store, trait, list(vector_ids))
    head = records[0]
    key = GroupKey(head["model_key"], head["fmt"], head["site"], head["pooling"])
    prompt_table = fitted_prompts(store, key, trait, head["where_sql"], head["fingerprint"])
    # the runs that made the vectors: the ingest runs that committed their rows, the extract runs that fitted them
    rows = store.group_rows(key, ["row", "prompt_id", "run_id"])
    wanted = pc.is_in(rows["prompt_id"], value_set=prompt_table["prompt_id"].combine_chunks())
    ingest_ids = sorted(set(rows.filter(wanted)["run_id"].to_pylist()))
    ingests = run_records(store, ingest_ids)
    extracts = run_records(store, sorted({r["run_id"] for r in records}))
    # prompts those runs captured beside the bundle's: they may have shared its batches
    beside = int(pc.sum(pc.and_(pc.invert(wanted), pc.is_in(rows["run_id"], value_set=pa.array(
        ingest_ids, pa.string())))).as_py() or 0)
    model, notes = recorded_model(ingests, key)
    evidence, picks, capability_rows = gather_evidence(store, trait, records, prompt_table, prompts)
    uses = usage_commands(out.name, records, picks, trait, model["spec"])
    reproduce = reproduce_record(store, trait, key, records, prompt_table, prompts, model, ingests, extracts,
                                 uses["use"], beside)
    front = front_matter(trait, model, {"fmt": key.fmt, "site": key.site, "pooling": key.pooling}, records, picks,
                         random_aurocs(store, records), license_, notes)
    datasets = sorted(set(prompt_table["dataset"].to_pylist()))
    card = join_front_matter(front, card_body(front, prompts, capability_rows, uses["use"], datasets))
    meta = {"format": FORMAT, "trait": trait, "model_key": key.model_key,
            "vectors": [{k: r.get(k) for k in ("vector_id", "method", "layer", "fmt", "site", "pooling", "auroc",
                                               "cohens_d", "held_split", "fingerprint", "code_version")}
                        | {"unit_norm": True, "exports": uses["exports"][r["vector_id"]]} for r in records]}
    vectors = {r["vector_id"]: np.asarray(r["vector"], np.float32) for r in records}
    files = write_bundle(out, vectors, meta, evidence, card, reproduce)
    return {"files": files, "records": records, "reproduce": reproduce, "picks": picks, "front": front}


def recorded_model(ingests: list[dict], key: GroupKey) -> tuple[dict, dict]:
    """(the model the rows were captured with: key, name, spec to load it by (None: the default
    model), hub id, the SHA-256 of its checkpoint's files; ``{field: why it is null}``)."""
    from traitlens.pipeline.model.identity import DEFAULT_MODEL, is_default

    capture = next((r["config"] for r in reversed(ingests) if r.get("config")), None) or {}
    spec = capture.get("model_path")
    spec = None if spec is None or is_default(capture.get("model")) else spec
    weights = checkpoint_hashes(spec)
    notes = {}
    if weights is None:
        notes["model.weights_sha256"] = (f"the checkpoint {spec or 'default'} is not on the machine that wrote the "
                                         "bundle: only the model key's fingerprint identifies it")
    hub = f"HuggingFaceTB/{DEFAULT_MODEL}" if spec is None else (
        spec if "/" in spec and not Path(spec).expanduser().exists() else None)
    return {"key": key.model_key, "name": capture.get("model") or key.model_key.rsplit("-", 1)[0], "spec": spec,
            "hub_id": hub, "weights": weights, "weights_sha256": weights["sha256"] if weights else None,
            "capture": capture}, notes


def gather_evidence(store: Store, trait: str, records: list[dict], prompt_table: pa.Table,
                    prompts: bool) -> tuple[dict[str, pa.Table], dict[str, dict], int | None]:
    """(``{evidence name: table}``, the steering picks, the capability rows or None where the
    store has no capability table). Steering: the vectors' rows and the random floor's at their
    layers."""
    ids = [r["vector_id"] for r in records]
    layers = sorted({int(r["layer"]) for r in records})
    steering = _rows_of(store, "steering", STEERING_SCHEMA, lambda t: pc.and_(
        pc.equal(t["trait"], trait), pc.or_(pc.is_in(t["vector_id"], value_set=pa.array(ids, pa.string())),
                                            pc.and_(pc.equal(t["method"], "random"),
                                                    pc.is_in(t["layer"], value_set=pa.array(layers, pa.int32()))))))
    evidence = {"metrics": pa.Table.from_pylist([{k: r.get(k) for k in METRICS_SCHEMA.names} for r in records],
                                                schema=METRICS_SCHEMA),
                "steering": steering}
    capability_rows = None
    if CAPABILITY_TABLE in store.tables:  # (absent from stores written before that table)
        cap = store.table(CAPABILITY_TABLE)
        if "vector_id" in cap.column_names:
            cap = cap.filter(pc.is_in(cap["vector_id"], value_set=pa.array(ids, pa.string())))
        if cap.num_rows:  # only where the vectors' capability damage was measured
            evidence["capability"] = cap
            capability_rows = cap.num_rows
    evidence["prompts"] = prompt_table if prompts else prompt_table.drop_columns(["text", "messages"])
    return evidence, steering_picks(steering.to_pylist(), ids), capability_rows


def reproduce_record(store: Store, trait: str, key: GroupKey, records: list[dict], prompt_table: pa.Table,
                     prompts: bool, model: dict, ingests: list[dict], extracts: list[dict], uses: dict,
                     beside: int) -> dict:
    """reproduce.json (less its file hashes): everything a refit needs and everything that decides
    its numbers. ``beside``: prompts the same ingest runs captured that the bundle leaves out."""
    from traitlens.pipeline.capture.splits import PLAIN_CUTS
    from traitlens.store.store import code_version, now_utc

    head = records[0]
    device = sorted({str(r["config"].get("device")) for r in ingests if r.get("config")})
    dtypes = sorted({_torch_dtype(r["config"]) for r in ingests if r.get("config")})
    return {
        "format": FORMAT, "created_at": now_utc().isoformat(), "trait": trait,
        "vectors": [{"vector_id": r["vector_id"], "method": r["method"], "layer": int(r["layer"]),
                     "run_id": r["run_id"], "fingerprint": r["fingerprint"]} for r in records],
        "model": {k: model[k] for k in ("key", "name", "spec", "hub_id", "weights")},
        "group": {"model_key": key.model_key, "fmt": key.fmt, "site": key.site, "pooling": key.pooling,
                  "layers": store.layers(key)},
        "corpus": {"sha256": corpus_sha256(prompt_table), "n_prompts": prompt_table.num_rows,
                   "prompt_ids": prompt_table["prompt_id"].to_pylist(), "fingerprint": head["fingerprint"],
                   "texts_included": prompts, "where": head["where_sql"],
                   "split": {"rule": "each record's own split, else a stored prompt's own, else train/val/test by "
                                     "sha256('split:' + prompt_id) ranked within each (trait, dataset, label), cut "
                                     f"at {list(PLAIN_CUTS)} and moved so every split holds 2 of a group of 6 or "
                                     "more (pipeline/capture/splits.py)",
                             "seed": None, "why": "the split is a hash of each prompt's id: it takes no seed"}},
        "capture": {"settings": _capture_settings(model["capture"], store, key),
                    "other_prompts_in_its_runs": beside,
                    "runs": [{**r, "command": ingest_command(r["config"]) if r.get("config") else None}
                             for r in ingests]},
        "extract": {**_fit_settings(head), "held_split": head["held_split"],
                    "runs": [{**r, "command": extract_command(r["config"], key) if r.get("config") else None}
                             for r in extracts]},
        "traitlens": {"version": code_version(), **source_commit()},
        "libraries": library_versions(), "platform": platform.platform(),
        "device": device[0] if len(device) == 1 else device, "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "commands": uses,
    }


def _fit_settings(rec: dict) -> dict:
    """``{"n_boot", "seed"}`` of a stored vector (its ``info`` records them; they are in its id too)."""
    info = json.loads(rec.get("info") or "{}")
    return {"n_boot": info.get("n_boot"), "seed": info.get("seed")}


def _rows_of(store: Store, name: str, schema: pa.Schema, cond) -> pa.Table:
    t = store.table(name)
    return t.filter(cond(t)) if t.num_rows else schema.empty_table()


def _torch_dtype(cfg: dict) -> str:
    """The dtype the model ran in: recorded since 0.2.1 (``torch_dtype``), else what ``auto``
    resolved to by the loader's rule (float32 on a CPU, bfloat16 on CUDA)."""
    if cfg.get("torch_dtype"):
        return cfg["torch_dtype"]
    if cfg.get("dtype") not in (None, "auto"):
        return cfg["dtype"]
    return "bfloat16" if str(cfg.get("device", "")).startswith("cuda") else "float32"


def _capture_settings(cfg: dict, store: Store, key: GroupKey) -> dict:
    """What `reproduce` captures with: the ingest run's settings that decide the activations."""
    from traitlens.workflows.screening import capture_policy

    policy = capture_policy(store, key)
    return {"model_path": cfg.get("model_path"), "chat": key.fmt == "chat", "batch_size": cfg.get("batch_size", 32),
            "max_tokens": cfg.get("max_tokens", 16384), "padding_side": cfg.get("padding_side", "right"),
            "max_length": policy.get("max_length", cfg.get("max_length")), "generate": cfg.get("generate", 0),
            "device": cfg.get("device"), "dtype": _torch_dtype(cfg) if cfg else None}


# -- bundles as inputs ---------------------------------------------------------------------------
def adopt(store_path, bundle: Bundle, records: list[dict] | None = None) -> Store:
    """Add the bundle's vectors (``records``: these only; all by default; under their own ids) and
    its prompts to the store at ``store_path`` (created if absent), so verbs that read the store
    (score, evaluate, merged exports) use them like stored ones. What the store holds already is
    left alone; prompts the store labels or splits otherwise are refused (exit 2) before anything
    is written. Returns the store."""
    records = bundle.records if records is None else records
    table = bundle.table("prompts")
    texts = table is not None and "text" in table.column_names
    new = []
    if texts:
        wanted = [{**{c: r[c] for c in ("prompt_id", "text", "messages", "dataset", "trait", "label", "split")},
                   "source": f"bundle {bundle.path.name}", "extra": "{}"} for r in table.to_pylist()]
        store = Store.open(store_path, create=True) if not Store.exists(store_path) else Store.open(store_path)
        new, changed = store.prompt_changes(wanted)
        if changed:
            r = changed[0]
            raise BundleError(f"{bundle.path}: the store {store_path} labels {len(changed)} of the bundle's prompts "
                              f"otherwise (e.g. {r['prompt_id']}: the bundle says label {r['label']:+d}, split "
                              f"{r['split']}); nothing was written: use another --store")
    else:
        store = Store.open(store_path, create=True) if not Store.exists(store_path) else Store.open(store_path)
    have = set(store.table("vectors", columns=["vector_id"])["vector_id"].to_pylist())
    todo = [r for r in records if r["vector_id"] not in have]
    if not (new or todo):
        return store
    config = {"bundle": str(bundle.path), "reproduce_sha256": _reproduce_sha(bundle),
              "vectors": [r["vector_id"] for r in todo], "prompts": len(new)}
    with store.lock("bundle"), store.run("bundle", config) as run:
        store.write_prompts(new, [])
        store.append("vectors", [{**r, "vector": [float(x) for x in r["vector"]], "run_id": run.run_id}
                                 for r in todo])
        run.counts = {"vectors": len(todo), "prompts": len(new)}
    return store


def _reproduce_sha(bundle: Bundle) -> str:
    from traitlens.store.location import sha256_file
    from traitlens.store.vocabulary import BUNDLE_REPRODUCE

    return sha256_file(bundle.path / BUNDLE_REPRODUCE)


def load(path) -> Bundle:
    """A bundle given as ``--vector DIR``, its hashes checked first (a :class:`BundleError`, exit 2,
    names a missing or changed file)."""
    return open_bundle(path)


# -- a library of bundles ------------------------------------------------------------------------
def library(folder) -> list[dict]:
    """One row per vector of every bundle under ``folder`` (its front matter), each bundle's
    files checked: ``status`` is ``ok`` or why it cannot be trusted."""
    from traitlens.pipeline.extract.bundle import split_front_matter
    from traitlens.store.vocabulary import BUNDLE_CARD, BUNDLE_REPRODUCE

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--library {folder}: no such folder")
    out = []
    for rec_path in sorted(folder.rglob(BUNDLE_REPRODUCE)):
        bdir = rec_path.parent
        status = "ok"
        try:
            open_bundle(bdir)
        except BundleError as e:
            status = f"{e.problem or 'damaged'}: {e.file}" if e.file else f"damaged: {e}"
        try:
            front, _ = split_front_matter((bdir / BUNDLE_CARD).read_text(encoding="utf-8"))
            t = front["traitlens"]
            vecs = t["vectors"]
        except (OSError, BundleError, KeyError, TypeError, UnicodeDecodeError) as e:
            out.append({"bundle": str(bdir), "status": status if status != "ok" else f"no card: {e}"})
            continue
        for v in vecs:
            h, s = v.get("held_out") or {}, v.get("steering") or {}
            out.append({"bundle": str(bdir), "trait": t.get("trait"), "model": (t.get("model") or {}).get("key"),
                        "site": t.get("site"), "pooling": t.get("pooling"), "method": v.get("method"),
                        "layer": v.get("layer"), "vector_id": v.get("vector_id"), "auroc": h.get("auroc"),
                        "auroc_ci95": h.get("auroc_ci95"), "cohens_d": h.get("cohens_d"),
                        "steer_shift": s.get("shift"), "steer_kl": s.get("kl"), "license": front.get("license"),
                        "status": status})
    return out
