"""The projection difference on real data: persona statements given as assistant replies.

    python bench/projection_diff.py --store pd.store [--traits agreeableness,openness] [--generate 32]

For each persona trait (``../shared/data/persona``) every statement becomes a chat: a neutral
question (one of a fixed few, picked by the statement's hash) and the statement as the
assistant's reply, labelled as the data set labels the statement. The chats are ingested with
``assistant_mean`` pooling on the default model, the six methods are extracted, and the
vector the selection rule picks (on val) scores the *test* chats, which no choice saw, with
``score --generate`` semantics: the model's own greedy reply to the same question is generated,
captured alike and scored, and the projection difference is the given reply's calibrated score
minus the model's. Printed per trait: the mean difference of the trait-positive and of the
trait-negative replies (95% intervals), the share of each above the model's own, the AUROC of
the difference against the labels with the same figure for a random direction at the same layer
(the floor), and the seconds the replies step took (generation, capture, the table rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from traitlens.pipeline.capture.corpus import prompt_id_for
from traitlens.pipeline.capture.splits import hash_split
from traitlens.pipeline.capture.ingest import IngestConfig, ingest
from traitlens.pipeline.capture.plan import read_corpus
from traitlens.pipeline.extract.config import ExtractConfig
from traitlens.pipeline.extract.jobs import extract
from traitlens.pipeline.extract.metrics import auroc
from traitlens.pipeline.extract.scoring import score
from traitlens.pipeline.model.loading import load_model
from traitlens.queries import StoreSQL
from traitlens.queries.selection import best_vector
from traitlens.store import Store
from traitlens.workflows.screening import own_replies

PERSONA = Path(__file__).resolve().parents[2] / "shared" / "data" / "persona"
QUESTIONS = ["Tell me something about yourself.", "What do you think about people?",
             "How would you describe the way you live?", "What matters to you?",
             "Say one thing you believe.", "How do you usually feel?"]


def chats(path: Path) -> list[dict]:
    """The persona file's statements as labelled chats with an explicit split."""
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        q = QUESTIONS[int(hashlib.sha256(row["statement"].encode()).hexdigest(), 16) % len(QUESTIONS)]
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": row["statement"]}]
        out.append({"messages": msgs, "trait": path.stem, "label": 1 if row["answer_matching_behavior"].strip() == "Yes"
                    else -1, "split": hash_split(prompt_id_for(None, msgs))})
    return out


def interval(x: np.ndarray) -> str:
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():+.2f} [{x.mean() - half:+.2f}, {x.mean() + half:+.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="pd.store")
    ap.add_argument("--traits", default="")
    ap.add_argument("--generate", type=int, default=32)
    ap.add_argument("--layers", default="6,10,14,18,22")
    ap.add_argument("--n-boot", type=int, default=4)
    args = ap.parse_args()
    files = [f for f in sorted(PERSONA.glob("*.jsonl")) if not args.traits or f.stem in args.traits.split(",")]
    if not files:
        raise SystemExit(f"no persona data at {PERSONA}")
    lm = load_model(None, log=lambda *a: None)
    tmp = Path(tempfile.mkdtemp(prefix="pd-"))
    lines = []
    for f in files:
        rows = chats(f)
        corpus = tmp / f"{f.stem}.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        test = tmp / f"{f.stem}-test.jsonl"
        test.write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] == "test"))
        ingest(args.store, [corpus], cfg=IngestConfig(poolings=["assistant_mean"], layers=args.layers), lm=lm,
               progress=False, log=lambda *a: None)
        res = extract(args.store, f.stem, cfg=ExtractConfig(n_boot=args.n_boot), pooling="assistant_mean")
        store = Store.open(args.store)
        with StoreSQL(store) as q:
            pick = best_vector(q, f.stem, model_key=res.key.model_key)
            rand = q.query("SELECT vector_id FROM vectors WHERE trait = ? AND method = 'random' AND layer = ? "
                           "AND pooling = 'assistant_mean' LIMIT 1", [f.stem, pick["layer"]]).to_pylist()[0]
        records = read_corpus([test])[0]
        t0 = time.perf_counter()
        rep = own_replies(args.store, pick, records, args.generate, lm=lm, progress=False)
        gen_s = time.perf_counter() - t0
        ids = {r.prompt_id for r in records} | set(rep.pairs.values())
        label = {r.prompt_id: r.label for r in records}
        found = {}
        for name, vid in (("pick", pick["vector_id"]), ("random", rand["vector_id"])):
            score(args.store, f.stem, vid, ids)
            with StoreSQL(store) as q:
                d = q.query("SELECT prompt_id, calibrated_diff, dataset_score FROM projection_diffs "
                            "WHERE vector_id = ? AND generate = ?", [vid, args.generate]).to_pylist()
            d = [x for x in d if x["prompt_id"] in label]
            found[name] = (np.asarray([x["calibrated_diff"] for x in d]), np.asarray([label[x["prompt_id"]] > 0 for x in d]),
                           np.asarray([x["dataset_score"] for x in d]))
        diff, pos, given = found["pick"]
        rdiff, rpos, _ = found["random"]
        lines.append(f"| {f.stem} | {pick['method']} L{pick['layer']} | {pos.sum()} / {(~pos).sum()} | "
                     f"{interval(diff[pos])} | {interval(diff[~pos])} | {np.mean(diff[pos] > 0):.0%} / "
                     f"{np.mean(diff[~pos] > 0):.0%} | {auroc(diff, pos):.3f} | {auroc(given, pos):.3f} | "
                     f"{auroc(rdiff, rpos):.3f} | {gen_s:.1f} |")
        print(lines[-1], flush=True)
    print("\n| trait | vector (val pick) | test pos / neg | diff, trait-positive replies | diff, trait-negative "
          "replies | above the model's own (pos / neg) | AUROC of diff | AUROC of the given reply's score | "
          "random-direction floor (AUROC of diff) | replies step, s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
