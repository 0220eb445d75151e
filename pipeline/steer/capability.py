"""What a steering setting breaks, the field's way: lm-evaluation-harness tasks under the push.

``evaluate --capability TASKS`` runs the named lm-eval tasks on the unsteered model once and
under every setting the sweep measures (:class:`Capability`, through the ``traitlens`` lm-eval
model of :mod:`.harness`, so any task type runs), and stores a ``capability`` row per (setting,
task, metric): what lm-eval returned (value, stderr, documents), the same metric unsteered, and
the change with its 95% interval. The interval is a paired bootstrap over the documents where
lm-eval's per-document values average to its figure (accuracy-like metrics), else the normal
interval from both standard errors (corpus-level metrics such as BLEU or perplexity), else none;
the row says which. ``--capability-include DIR`` adds local task folders (their datasets may be
local json / jsonl files, so they run offline); a task that needs a download it cannot make is a
clear error naming the task. lm-eval is the optional extra ``traitlens[eval]``.

Shapes: per-document values ``[n_docs]``; a run is ``{(task, metric): result}``.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager

import numpy as np

from traitlens.store.errors import InputError

BOOTSTRAP_ITERS = 1000  # lm-eval's resamples for the stderr of metrics without a closed form (its CLI: 100000)


def require_lm_eval():
    """The ``lm_eval`` module, or InputError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise InputError("--capability runs lm-evaluation-harness tasks: pip install 'traitlens[eval]' "
                         "(or pip install lm-eval)") from None
    return lm_eval


def offline() -> bool:
    """Whether Hugging Face downloads are switched off (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def task_manager(names: list[str], include: list[str] | None = None):
    """lm-eval's ``TaskManager`` for ``names``: the ``include`` folders alone when they hold every
    name (no scan of lm-eval's own thousands of task files), else with lm-eval's tasks too.
    InputError naming a folder that does not exist or a task no folder holds."""
    import inspect

    from lm_eval.tasks import TaskManager

    include = [str(p) for p in include or []]
    for p in include:
        if not os.path.isdir(p):
            raise InputError(f"--capability-include {p}: no such folder (a folder of lm-eval task YAML files)")
    if include and "include_defaults" in inspect.signature(TaskManager).parameters:
        tm = TaskManager(include_path=include, include_defaults=False)
        if all(n in tm.all_tasks for n in names):
            return tm
    tm = TaskManager(include_path=include or None)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        raise InputError(f"--capability {unknown[0]}: lm-eval knows no such task, group or tag"
                         + (f" (nor do the folders {', '.join(include)})" if include else "")
                         + "; `lm-eval ls tasks` lists them, --capability-include DIR adds a folder of your own")
    return tm


def check_tasks(names: list[str], tm) -> None:
    """Load each task once (its dataset too, so later runs read it from the cache); InputError
    naming the task whose data cannot be had, and saying why (offline: it needs a download)."""
    from lm_eval.tasks import get_task_dict

    for name in names:
        try:
            get_task_dict([name], tm)
        except Exception as e:  # datasets and lm-eval raise many kinds: every one is this task's failure
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            hint = ("; downloads are off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and its dataset is not in the local "
                    "cache: run it once with network, or give a task folder whose dataset is a local json/jsonl file "
                    "(--capability-include DIR)" if offline() else
                    "; a task whose dataset is on the Hugging Face hub needs the network the first time")
            raise InputError(f"--capability {name}: lm-eval could not load the task's data ({why}){hint}") from None


@contextmanager
def _quiet_lm_eval():
    """lm-eval's INFO and WARNING lines held back while it runs inside ``evaluate``."""
    import logging

    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [g.level for g in loggers]
    for g in loggers:
        g.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for g, level in zip(loggers, levels):
            g.setLevel(level)


def results_of(out: dict) -> dict[tuple[str, str], dict]:
    """``{(task, metric): {value, stderr, n, higher_is_better, docs}}`` from what lm-eval's
    ``simple_evaluate`` returned (``log_samples=True``): ``metric`` as lm-eval keys it
    (``acc,none``: the metric, then its filter); ``docs`` the per-document values
    ``{doc_id: float}`` when every one is a number, else None; groups have none."""
    found: dict[tuple[str, str], dict] = {}
    samples = out.get("samples") or {}
    for task, res in out["results"].items():
        better = (out.get("higher_is_better") or {}).get(task, {})
        n_docs = ((out.get("n-samples") or {}).get(task) or {}).get("effective", res.get("sample_len"))
        for key, value in res.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = res.get(f"{metric}_stderr,{filt}")
            docs = None
            per = [s for s in samples.get(task, []) if s.get("filter", filt) == filt and metric in s]
            if per and all(isinstance(s[metric], (int, float, bool, np.number)) for s in per):
                docs = {int(s["doc_id"]): float(s[metric]) for s in per}
            found[(task, key)] = {"value": float(value),
                                  "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                                  "n": None if n_docs is None else int(n_docs),
                                  "higher_is_better": better.get(metric), "docs": docs}
    return found


def change_interval(base: dict, steered: dict, seed: int = 0) -> tuple[float, float, float, str]:
    """(change, low, high, how) of ``steered`` against ``base`` (two :func:`results_of` entries):
    a paired bootstrap of the per-document differences when both have per-document values whose
    mean is lm-eval's figure, else the normal interval from both standard errors, else none."""
    from traitlens.pipeline.steer.stats import bootstrap_ci

    change = steered["value"] - base["value"]
    a, b = base.get("docs"), steered.get("docs")
    if a and b and a.keys() == b.keys():
        ids = sorted(a)
        x, y = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
        if math.isclose(x.mean(), base["value"], abs_tol=1e-9) and math.isclose(y.mean(), steered["value"], abs_tol=1e-9):
            lo, hi = bootstrap_ci(y - x, seed=seed)
            return change, lo, hi, "paired bootstrap"
    if base.get("stderr") is not None and steered.get("stderr") is not None:
        half = 1.959964 * math.hypot(base["stderr"], steered["stderr"])
        return change, change - half, change + half, "normal from both stderrs"
    return change, math.nan, math.nan, "none"


class Capability:
    """lm-eval ``tasks`` measured on ``lm`` unsteered and under any intervention, one model for all.

    ``include``: local task folders; ``limit``: documents per task (lm-eval's ``--limit``);
    ``batch_size``: lm-eval's. The tasks and their data are checked once, here: an unknown task or
    one whose data cannot be had is an InputError naming it."""

    def __init__(self, lm, tasks: list[str], include: list[str] | None = None, limit: int | None = None,
                 batch_size: int = 8, seed: int = 0):
        lm_eval = require_lm_eval()
        from traitlens.pipeline.steer.harness import TraitlensLM

        if not tasks:
            raise InputError("--capability: name at least one lm-eval task")
        self.lm, self.tasks, self.include, self.limit, self.seed = lm, list(tasks), list(include or []), limit, seed
        self.version = getattr(lm_eval, "__version__", "unknown")
        with _quiet_lm_eval():
            self.manager = task_manager(self.tasks, self.include)
            check_tasks(self.tasks, self.manager)
            self.model = TraitlensLM(pretrained=lm, batch_size=batch_size)
        self.base: dict | None = None
        self.runs = 0  # lm-eval runs made (the unsteered one included)

    def describe(self) -> str:
        return (f"lm-eval {self.version}: {', '.join(self.tasks)}"
                + (f" (at most {self.limit} documents each)" if self.limit else "")
                + (f", tasks from {', '.join(self.include)}" if self.include else ""))

    def run(self, intervention=None, describe: str = "", positions: str = "all") -> dict:
        """One lm-eval run of the tasks under ``intervention`` (a function ``(pad) -> context
        manager``, or None: unsteered): :func:`results_of` its output."""
        import lm_eval

        self.model.use(intervention, describe or "unsteered", positions)
        try:
            with _quiet_lm_eval():
                out = lm_eval.simple_evaluate(model=self.model, tasks=self.tasks, task_manager=self.manager,
                                              limit=self.limit, log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS)
        finally:
            self.model.use(None, "unsteered")  # the next run starts from the plain model, whatever happened
        self.runs += 1
        return results_of(out)

    def unsteered(self) -> dict:
        """The unsteered run (made once)."""
        if self.base is None:
            self.base = self.run(None)
        return self.base

    def measure(self, intervention, unsteered: bool = False, describe: str = "", positions: str = "all") -> list[dict]:
        """A row per (task, metric) under ``intervention`` (``unsteered``: it changes nothing, as a
        push at alpha 0: the unsteered run is reused), each with the change against unsteered and
        its interval (:func:`change_interval`)."""
        base = self.unsteered()
        got = base if unsteered else self.run(intervention, describe, positions)
        rows = []
        for key, r in got.items():
            b = base.get(key)
            change, lo, hi, how = (change_interval(b, r, self.seed) if b is not None
                                   else (math.nan, math.nan, math.nan, "none"))
            rows.append({"task": key[0], "metric": key[1], "value": r["value"], "stderr": r["stderr"], "n": r["n"],
                         "higher_is_better": r["higher_is_better"], "unsteered": None if b is None else b["value"],
                         "change": change, "change_low": lo, "change_high": hi, "interval": how})
        return rows

    def unsteered_rows(self) -> list[dict]:
        """The unsteered run as rows (change 0)."""
        return self.measure(None, unsteered=True)

    def detail(self) -> str:
        return json.dumps({"lm_eval": self.version, "limit": self.limit, "include": self.include,
                           "bootstrap_iters": BOOTSTRAP_ITERS})

