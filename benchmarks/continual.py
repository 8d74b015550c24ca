"""Continual learning at scale: 24 invented-entity documents learned one after another, gate policies side by side.

Every arm learns the bundled stream (`seal_trl.continual.stream.bundled_stream`, 24 documents, 6 gate and 6 report
questions each) in order, from the same base model, with the same self-edit per document (written once, greedily, by
the base model). The learner sees only each document's gate half and the gate half of the regression suite; every
figure in the table is scored on the *report* halves, which nothing in the learner reads:
- per document: soft accuracy (the gold answer's mean softmax weight among the document's answers and distractors,
  percent) and accuracy on its report questions, right after its own step and at the end of the stream;
- general ability: the held-out perplexity and QA soft accuracy on the report half of the regression suite.

Arms (all from scratch in every invocation; `--arms` picks):
- `naive`: always promote, no replay, no anchor (the paper's sequential merge);
- `reject`: replay of earlier documents' examples, a KL anchor on general text, the gate, a refused candidate dropped;
- `rescale`: the same, but a refused candidate's LoRA update is shrunk by bisection until the gate holds (STABLE);
- `rescale-kl`: `rescale` with a KL(promoted || candidate) limit on the new document's inputs (`--max-kl`);
- `rescale-budget`: `rescale` with a total budget against the base model (the gate-half regression suite may not get
  more than 2% worse than the base model's, the goal's own limit, however many promotions came before);
- `gate-only`: the gate with rejection, replay and anchor off;
- `isolated`: each document learned alone on the base model (the plasticity reference).

Arms run as separate processes (`--jobs` at a time, `--threads` each), write their steps to `--out` as they go, and
resume there after an interruption (same commit and settings only). The table, the JSON (benchmarks/continual_results.json)
and the chart (benchmarks/continual_forgetting.png) are written by the invocation that finishes the last arm, with
the commit in them. The JSON also holds what the run pinned and every arm's steps: a run directory lost with its
machine is rebuilt from it by `--restore-from` (every arm restored for the report; an arm stopped early reruns from
scratch when run, its registry of adapters is not in the JSON).

    PYTHONPATH=. python benchmarks/continual.py --out runs/continual --jobs 2      # embedded SmolLM2-135M, 2 cores
    PYTHONPATH=. python benchmarks/continual.py --model tiny --documents 3 --out /tmp/c   # a smoke run (not appended)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ARMS = ("isolated", "naive", "reject", "rescale", "rescale-kl", "rescale-budget", "gate-only")
#: rescale-budget: the total regression budget against the base model, relative (the goal's general-ability limit).
TOTAL_BUDGET = 0.02
#: The settings that make two invocations the same run (resume is refused when any differs).
RUN_KEYS = ("model", "documents", "epochs", "lr", "lora_r", "max_new_tokens", "max_lines", "metric", "replay_ratio",
            "anchor_weight", "max_kl", "rescale_floor", "rescale_steps", "seed")


def load(model_name: str):
    if model_name == "tiny":
        from seal_trl.testing import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        return build_tiny_model(tok), tok
    from seal_trl.models import load_model_and_tokenizer

    return load_model_and_tokenizer(None if model_name == "embedded" else model_name)


def split_suite(suite):
    """(gate half, report half) of a regression suite: alternate QA items and alternate sentences of the held-out
    text, so the gate and the report never read the same question or sentence and both halves cover every topic
    (the text pairs its sentences by topic; cut in two, the halves were about different things)."""
    import re

    from seal_trl.continual.regression import RegressionSuite

    sentences = re.split(r"(?<=[.!?])\s+", suite.heldout_text)
    return (RegressionSuite(" ".join(sentences[0::2]), suite.qa[0::2]),
            RegressionSuite(" ".join(sentences[1::2]), suite.qa[1::2]))


def _pinned(out: Path, name: str, write) -> Path:
    """`--out/<name>`, written by `write(path)` when the run starts; a run that already has arms but not the file
    started before runs pinned it, and is refused rather than pinned to today's bundled data."""
    path = out / name
    if not path.exists():
        if any(out.glob("arm-*.json")):
            sys.exit(f"{out} has arms but no {name} (it started before runs pinned it): write it from the bundled data "
                     f"at the commit in run.json (`git show <commit>:seal_trl/data/...`)")
        write(path)
    return path


def run_suite(out: Path):
    """The regression suite this run measures with, pinned like its documents (`--out/regression_suite.json`)."""
    from importlib import resources

    from seal_trl.continual.regression import RegressionSuite

    bundled = resources.files("seal_trl.data").joinpath("regression_suite.json")
    return RegressionSuite.from_file(_pinned(out, "regression_suite.json",
                                             lambda path: path.write_text(bundled.read_text(encoding="utf-8"))))


def run_suite_halves(out: Path):
    """(gate half, report half) of the run's suite, pinned as `--out/regression_halves.json` when the run starts, so
    arms at different commits cannot split it differently."""
    from seal_trl.continual.regression import RegressionSuite

    def write(path: Path) -> None:
        gate, report = split_suite(run_suite(out))
        _write(path, {"gate": gate.to_json(), "report": report.to_json()})

    halves = json.loads(_pinned(out, "regression_halves.json", write).read_text(encoding="utf-8"))
    return tuple(RegressionSuite.from_json(halves[name], source=f"{out}/regression_halves.json {name}")
                 for name in ("gate", "report"))


PINNED = ("documents.json", "regression_suite.json", "regression_halves.json")


#: What every arm step records (the worker writes these; a restore refuses a step without them).
STEP_KEYS = frozenset({"step", "doc", "version", "promoted", "registry_promoted", "scale", "kl_to_promoted", "rescale",
                       "reasons", "objectives", "gate_view", "seconds", "before_own", "scores", "general"})


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _restored_files(results, settings: dict | None) -> tuple[dict, list[str]]:
    """The files a run directory holds, from a report's JSON, each field checked so a bad one is named here rather
    than failing the report or an arm later. Raises ValueError naming the field."""
    from continual_report import partial_summary, summarise

    from seal_trl.continual.documents import Document
    from seal_trl.continual.regression import RegressionSuite, RegressionSuiteError

    if not isinstance(results, dict):
        raise ValueError("not a report's JSON object")
    missing = [key for key in ("run", "self_edits", "pinned", "arms") if key not in results]
    if missing:
        raise ValueError(f"it has no {', '.join(missing)} (written by a report before runs could be restored); "
                         "rebuild the run directory by hand or rerun its arms")
    run = results["run"]
    if not isinstance(run, dict) or not isinstance(run.get("settings"), dict) or set(run["settings"]) != set(RUN_KEYS):
        raise ValueError(f"`run.settings` must be an object with {', '.join(RUN_KEYS)}")
    if settings is not None and run["settings"] != settings:
        differ = [f"--{k.replace('_', '-')} {run['settings'][k]} (this command: {settings[k]})"
                  for k in RUN_KEYS if run["settings"][k] != settings[k]]
        raise ValueError(f"the run was made with {'; '.join(differ)}: pass the run's flags")
    n = run["settings"]["documents"]
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`run.settings.documents` must be a positive integer, not {_short(n)}")
    pinned = results["pinned"]
    if not isinstance(pinned, dict) or set(PINNED) - set(pinned):
        raise ValueError(f"`pinned` must be an object with {', '.join(PINNED)}")
    documents = pinned["documents.json"]
    if not isinstance(documents, list) or len(documents) != n:
        raise ValueError(f"`pinned.documents.json` must list the run's {n} documents")
    try:
        doc_ids = [Document.from_json(d).doc_id for d in documents]
        RegressionSuite.from_json(pinned["regression_suite.json"], source="`pinned.regression_suite.json`")
        halves = pinned["regression_halves.json"]
        for half in ("gate", "report"):
            RegressionSuite.from_json(halves[half], source=f"`pinned.regression_halves.json.{half}`")
    except RegressionSuiteError as err:
        raise ValueError(str(err)) from None
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"a pinned document or suite half is malformed ({type(err).__name__}: {err})") from None
    edits = results["self_edits"]
    if not isinstance(edits, dict) or not all(isinstance(edits.get(d), str) for d in doc_ids):
        raise ValueError("`self_edits` must map every pinned document's id to its self-edit text")
    finished, partial = results["arms"], results.get("partial_arms") or {}
    for field, records in (("arms", finished), ("partial_arms", partial)):
        if not isinstance(records, dict):
            raise ValueError(f"`{field}` must be an object of arm records by name")
        for arm, record in records.items():
            where = f"`{field}.{_short(arm)}`"
            if arm not in ARMS:
                raise ValueError(f"{where}: not an arm; arms: {', '.join(ARMS)}")
            if not isinstance(record, dict) or not isinstance(record.get("steps"), list) \
                    or not isinstance(record.get("base"), dict):
                raise ValueError(f"{where} must be an arm record with `base` and `steps`")
            if (record.get("done") is True) != (field == "arms") or (len(record["steps"]) == n) != (field == "arms"):
                raise ValueError(f"{where}: " + ("a finished arm has `done: true` and a step per document"
                                                 if field == "arms" else "an arm stopped early has fewer steps and no "
                                                 "`done: true`") + f" ({len(record['steps'])} steps, {n} documents)")
            for i, step in enumerate(record["steps"]):
                if not isinstance(step, dict) or STEP_KEYS - set(step):
                    raise ValueError(f"{where}.steps[{i}] must record {', '.join(sorted(STEP_KEYS))}")
                if step["doc"] != doc_ids[i]:
                    raise ValueError(f"{where}.steps[{i}] learned {_short(step['doc'])}, the pinned documents put "
                                     f"{doc_ids[i]!r} there")
    both = sorted(set(finished) & set(partial))
    if both:
        raise ValueError(f"{', '.join(both)} both finished and stopped early")
    try:  # what the report computes, so a record it cannot read is refused now
        metric = run["settings"]["metric"]
        summarise(finished, metric)
        for record in partial.values():
            partial_summary(record, finished.get("naive"), metric)
    except Exception as err:  # noqa: BLE001 (any failure means the records are not a report's)
        raise ValueError(f"the arm records do not report ({type(err).__name__}: {_short(str(err), 200)})") from None
    files = {"run.json": run, "self_edits.json": edits, **{name: pinned[name] for name in PINNED}}
    files |= {f"arm-{arm}.json": record for arm, record in finished.items()}
    files |= {f"arm-{arm}.json": {**record, "restored_without_registry": True} for arm, record in partial.items()}
    notes = [f"{arm}: stopped after {len(record['steps'])} of {n} documents when reported; restored for the report "
             "(--partial-arms), and its registry is not in the JSON, so running it starts it from scratch"
             for arm, record in partial.items()]
    return files, notes


def restore_run(results_path: Path, out: Path, settings: dict | None = None) -> list[str]:
    """Rebuild a run directory lost with its machine from the JSON its report wrote (`run`, `self_edits`, `pinned`,
    `arms`, `partial_arms`): the settings, the shared self-edits, the pinned documents and suite halves, and every
    arm, so the report and any arm not yet finished can run there again. Everything is checked first (against this
    command's `settings` too, when given), and the directory appears whole or not at all. An arm stopped early is
    restored for the report only: its registry of promoted adapters is not in the JSON, so running it starts it
    from scratch. Returns notes to print."""
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        sys.exit(f"--restore-from {results_path}: cannot read it ({_short(str(err), 200)}); pass the "
                 "continual_results.json a report wrote")
    try:
        files, notes = _restored_files(results, settings)
    except ValueError as err:
        sys.exit(f"--restore-from {results_path}: {err}")
    if out.is_symlink() and not out.exists():
        sys.exit(f"--out {out}: a symlink to nothing; pass a new or empty directory")
    target = out.resolve() if out.exists() else out
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        sys.exit(f"--out {out}: {'not a directory' if not target.is_dir() else 'not empty'}; pass a new or empty "
                 "directory (a restore never overwrites a run)")
    staging = target.parent / f".{target.name}.restoring"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, data in files.items():
            _write(staging / name, data)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        sys.exit(f"--out {out}: cannot write the restored run there ({err.strerror or err}); pass a writable, new or "
                 "empty directory")
    return notes


def arm_config(name: str, args) -> dict:
    from seal_trl.continual.gate import GateThresholds

    if name == "isolated":  # only its own document is scored: the gate's regression check would change nothing
        return {"promotion": "never", "replay_ratio": 0.0, "anchor_weight": 0.0, "check_regression": False}
    if name == "naive":
        return {"promotion": "always", "replay_ratio": 0.0, "anchor_weight": 0.0}
    if name == "gate-only":
        return {"promotion": "gate", "replay_ratio": 0.0, "anchor_weight": 0.0, "gate_policy": "reject",
                "thresholds": GateThresholds(probe_metric=args.metric)}
    protected = {"promotion": "gate", "replay_ratio": args.replay_ratio, "anchor_weight": args.anchor_weight,
                 "thresholds": GateThresholds(probe_metric=args.metric)}
    if name == "reject":
        return {**protected, "gate_policy": "reject"}
    rescale = {**protected, "gate_policy": "rescale", "rescale_floor": args.rescale_floor,
               "rescale_steps": args.rescale_steps}
    if name == "rescale":
        return rescale
    if name == "rescale-budget":
        return {**rescale, "thresholds": GateThresholds(probe_metric=args.metric,
                                                        max_total_perplexity_increase=TOTAL_BUDGET,
                                                        max_total_qa_drop=TOTAL_BUDGET)}
    return {**rescale, "thresholds": GateThresholds(probe_metric=args.metric, max_kl_to_promoted=args.max_kl)}


def _write(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_worker(name: str, args) -> None:
    """One arm, step by step, resumable: `--out/arm-<name>.json` holds every finished step."""
    import torch

    from seal_trl.continual.document_probes import labelled_probe, score_probe
    from seal_trl.continual.learner import ContinualConfig, ContinualLearner
    from seal_trl.continual.regression import regression_scores
    from seal_trl.continual.registry import AdapterRegistry
    from seal_trl.inner.config import InnerLoopConfig

    sys.path.insert(0, str(HERE))
    from results_file import commit as current_commit

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    record_path = out / f"arm-{name}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if record is not None and record.get("restored_without_registry"):
        print(f"[{name}] restored from a report without its registry: starting from scratch", flush=True)
        record = None
    if record is not None and record["steps"] and not (out / f"registry-{name}").exists():
        sys.exit(f"{record_path} has {len(record['steps'])} steps but {out}/registry-{name} is missing (a restored or "
                 f"copied run): delete {record_path} to rerun {name} from scratch")
    docs = run_documents(out, args.documents)
    edits = json.loads((out / "self_edits.json").read_text())
    gate_suite, report_suite = run_suite_halves(out)
    model, tok = load(args.model)
    inner = InnerLoopConfig(lora_r=args.lora_r, lora_alpha=2 * args.lora_r, num_epochs=args.epochs,
                            learning_rate=args.lr, seed=args.seed)
    config = ContinualConfig(seed=args.seed, max_self_edit_lines=args.max_lines, **arm_config(name, args))
    registry_dir = out / f"registry-{name}"
    if record is None and registry_dir.exists():
        shutil.rmtree(registry_dir)
    registry = AdapterRegistry(registry_dir, create=True, base_model=args.model)
    learner = ContinualLearner(model, tok, registry, config, inner, regression_suite=gate_suite)
    report_probes = {d.doc_id: labelled_probe(d.report_view()) for d in docs}

    def evaluate(doc_ids):
        learner.inner.reset_adapter(0)
        return ({d: score_probe(learner.model, tok, report_probes[d]) for d in doc_ids},
                regression_scores(learner.model, tok, report_suite))

    if record is None:
        learner.sync()
        scores, general = evaluate([d.doc_id for d in docs])
        record = {"arm": name, "commit": current_commit(), "config": repr(config),
                  "base": {"docs": scores, "general": general}, "steps": []}
        _write(record_path, record)
    else:
        record["commits"] = [*record.get("commits", [record["commit"]]), current_commit()]
    recorded = record["steps"][-1]["registry_promoted"] if record["steps"] else None
    if registry.promoted != recorded:
        # interrupted between a step's commit and its record: go back to the last recorded state
        if recorded is None:
            registry.rollback(registry.chain(registry.promoted)[0])  # the first promoted version...
            registry.rollback()  # ...and its parent, the bare base model
        else:
            registry.rollback(recorded)
    for i, doc in enumerate(docs):
        if i < len(record["steps"]):
            continue
        # the document on the model this step starts from: after minus this is the step's own gain
        learner.sync()
        learner.inner.reset_adapter(0)
        before_own = score_probe(learner.model, tok, report_probes[doc.doc_id])
        t0 = time.perf_counter()
        report = learner.adapt(doc, self_edits=[edits[doc.doc_id]])
        metrics = registry.get(report.version)["metrics"]
        if name == "isolated":  # the candidate itself, on its own document
            learner.inner.load_candidate(registry.load_adapter(report.version))
            scores = {doc.doc_id: score_probe(learner.model, tok, report_probes[doc.doc_id])}
            learner.inner.reset_adapter(0)
            general = None
        else:  # forgetting needs each document right after its step and every document at the end
            scores, general = evaluate([d.doc_id for d in docs] if i == len(docs) - 1 else [doc.doc_id])
        step = {"step": i, "doc": doc.doc_id, "version": report.version, "promoted": report.promoted,
                "registry_promoted": registry.promoted, "scale": getattr(report, "scale", 1.0),
                "kl_to_promoted": _find(metrics.get("after", {}), "kl_to_promoted"),
                "rescale": metrics.get("rescale"), "reasons": report.verdict.reasons,
                "objectives": [o.__dict__ for o in report.verdict.objectives],
                "gate_view": {"before_new": report.before["new"], "after_new": report.after["new"]},
                "seconds": time.perf_counter() - t0, "before_own": before_own, "scores": scores, "general": general}
        record["steps"].append(step)
        _write(record_path, record)
        print(f"[{name}] {i} {doc.doc_id}: promoted={report.promoted} scale={step['scale']} "
              f"new {scores[doc.doc_id][args.metric]:.1f} (base {record['base']['docs'][doc.doc_id][args.metric]:.1f})"
              f" {step['seconds']:.0f} s {'; '.join(report.verdict.reasons)[:200]}", flush=True)
    record["done"] = True
    _write(record_path, record)


def _paired_text(p) -> str:
    return (f"{p['mean_difference']:+.1f} [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}] ({p['wins']}/{p['losses']} "
            f"wins/losses, n = {p['n']})")


def _find(tree, key):
    """The first value of `key` anywhere in a nested dict (metrics layouts differ between versions)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def run_documents(out: Path, n: int) -> list:
    """The documents this run learns, as the run first read them: `--out/documents.json`, written from the bundled
    stream the first time, so a run resumed or reported after the bundled data changed still reads what it learned."""
    from seal_trl.continual.documents import Document
    from seal_trl.continual.stream import bundled_stream

    path = _pinned(out, "documents.json", lambda path: _write(path, [d.to_json() for d in bundled_stream(n)]))
    docs = [Document.from_json(d) for d in json.loads(path.read_text())]
    if len(docs) != n:
        sys.exit(f"{path} holds {len(docs)} documents, not --documents {n}")
    return docs


def write_self_edits(args, out: Path) -> None:
    """The same greedy self-edit per document for every arm, written once by the base model."""
    path = out / "self_edits.json"
    if path.exists():
        return
    from seal_trl.evaluation import generate_self_edits
    from seal_trl.tasks.knowledge import KnowledgeTask

    docs = [d.for_learner() for d in run_documents(out, args.documents)]
    model, tok = load(args.model)
    task = KnowledgeTask(chat=bool(getattr(tok, "chat_template", None)))
    edits = generate_self_edits(model, tok, task, [d.as_context() for d in docs], max_new_tokens=args.max_new_tokens)
    _write(path, dict(zip([d.doc_id for d in docs], edits)))


def start_run(args, out: Path, commit: str) -> None:
    settings = {k: getattr(args, k) for k in RUN_KEYS}
    run_file = out / "run.json"
    if run_file.exists():
        run = json.loads(run_file.read_text())
        if run["settings"] != settings:
            sys.exit(f"{out} holds a run with other settings; pass --fresh to start over there, or another --out")
        if run["commit"] != commit:
            print(f"note: {out} was started at commit {run['commit']}, this is {commit}: each arm records the commit "
                  "it ran at, and the report lists them", flush=True)
        return
    _write(run_file, {"commit": commit, "settings": settings, "started": time.strftime("%Y-%m-%d %H:%M:%S")})


def run_arms(args, out: Path, arms: list[str]) -> None:
    def done(arm: str) -> bool:
        path = out / f"arm-{arm}.json"
        return path.exists() and bool(json.loads(path.read_text()).get("done"))

    pending = [a for a in arms if not done(a)]
    running: list[tuple[str, subprocess.Popen]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(HERE.parent)}
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(out / f"arm-{name}.log", "a")
            cmd = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                if proc.returncode:
                    failed.append(f"{name} (rc {proc.returncode}, see {out}/arm-{name}.log)")
    if failed:
        sys.exit("arms failed: " + ", ".join(failed))


def report(args, out: Path, arms: list[str], commit: str, wall: float, partial: Sequence[str] = ()) -> None:
    from continual_report import (ARM_LABELS, GOAL, _ci as _fmt_ci, closest_to_goal, half_coverage, partial_summary,
                                  plot, summarise, table)

    records = {a: json.loads((out / f"arm-{a}.json").read_text()) for a in arms}
    summary = summarise(records, args.metric)
    partials = {a: partial_summary(json.loads((out / f"arm-{a}.json").read_text()), records.get("naive"), args.metric)
                for a in partial}
    not_run = [a for a in ARMS if a not in records and a not in partials]
    run = json.loads((out / "run.json").read_text())
    self_edits = json.loads((out / "self_edits.json").read_text())
    documents = run_documents(out, args.documents)
    coverage = half_coverage([d.to_json() for d in documents], self_edits)
    smoke = args.model == "tiny" or args.no_append
    json_path = out / "continual_results.json" if smoke else HERE / "continual_results.json"
    png_path = out / "continual_forgetting.png" if smoke else HERE / "continual_forgetting.png"
    _write(json_path, {"commit": commit, "run": run, "args": vars(args), "summary": summary,
                       "closest_to_goal": closest_to_goal(summary), "partial": partials,
                       "not_run": not_run, "half_coverage": coverage,
                       "arms": records, "partial_arms": {a: json.loads((out / f"arm-{a}.json").read_text()) for a in partial},
                       "self_edits": self_edits,
                       "pinned": {name: json.loads((out / name).read_text(encoding="utf-8")) for name in PINNED}})
    plot(summary, png_path)
    seconds = {a: sum(s["seconds"] for s in r["steps"]) for a, r in records.items()}
    lines = ["", f"## Continual learning at scale: gate policies on {args.documents} documents (commit {commit})", "",
             f"`python benchmarks/continual.py {' '.join(sys.argv[1:])}`; run started {run['started']}, this "
             f"invocation {wall / 60:.1f} min. Model `{args.model}`, LoRA r={args.lora_r}, lr {args.lr:g}, "
             f"{args.epochs} epochs; one greedy self-edit per document (<= {args.max_new_tokens} tokens, "
             f"<= {args.max_lines} lines) shared by every arm; replay ratio {args.replay_ratio:g} and KL anchor weight "
             f"{args.anchor_weight:g} where on; rescale floor {args.rescale_floor:g} in {args.rescale_steps} bisection "
             f"steps; KL limit {args.max_kl:g} nats/token (rescale-kl)"
             + (f"; total regression budget {100 * TOTAL_BUDGET:g}% against the base model, on the gate half of the "
                "regression suite (rescale-budget)" if "rescale-budget" in records else "")
             + ". Every figure is on report-half questions and the report half of the regression suite; the learner "
             "and its gate read only the gate halves. CIs: "
             "95% percentile bootstrap over documents. Arm minutes (sum of steps) and the commit each arm ran at: "
             + ", ".join(f"{a} {s / 60:.1f} ({'/'.join(dict.fromkeys(records[a].get('commits', [records[a].get('commit', '?')])))})" for a, s in seconds.items()) + ".", ""]
    lines += table(summary)
    lines += ["", f"Goal (issue 33): forgetting <= {GOAL['forgetting']:g} points, learning >= "
              f"{100 * GOAL['learning_ratio']:.0f}% of naive, general-ability loss <= {100 * GOAL['general_loss']:g}%."]
    for name, row in summary.items():
        if name == "isolated":
            continue
        g = row["goal"]
        ratio = row.get("learning_ratio", {})
        ratio_text = (f"learning {ratio.get('mean', float('nan')):.2f} of naive's (goal >= {GOAL['learning_ratio']:.2f})"
                      if ratio.get("judgeable") else "learning ratio not judgeable (the naive arm's learning is not "
                      "shown to be positive)" + ("" if g.get("own_learning_shown") or name == "naive" else
                                                  f"; its own learning {_fmt_ci(row['learning'])} is not shown "
                                                  "positive either"))
        loss = 100 * (g["general_loss_over"] + GOAL["general_loss"])
        iso = row.get("learning_ratio_isolated")
        if iso:
            ratio_text += (f"; learning {iso['mean']:.2f} [{iso['low']:.2f}, {iso['high']:.2f}] of the isolated arm's"
                           + ("" if iso.get("judgeable") else " (not judgeable either: learning alone not shown "
                              "positive)"))
        vs = row.get("vs_naive")
        paired = ("; minus naive, paired per document: learning " + _paired_text(vs["learning"]) + ", forgetting "
                  + _paired_text(vs["forgetting"])) if vs else ""
        lines.append(f"- {ARM_LABELS.get(name, name)}: forgetting {row['forgetting']['mean']:.1f} points (limit "
                     f"{GOAL['forgetting']:g}), {ratio_text}, general-ability loss {loss:.1f}% (limit "
                     f"{100 * GOAL['general_loss']:g}%): {_goal_verdict(g['met'])}{paired}.")
    closest = closest_to_goal(summary)
    if closest is not None:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in closest["parts"].items())
        lines.append(f"- Closest to the goal: {ARM_LABELS.get(closest['arm'], closest['arm'])} (excess over the limits, "
                     f"in units of each limit: {parts}; total {closest['excess']:.2f}"
                     + ("" if closest["learning_ratio_judged"] else "; the learning ratio not judgeable, so learning_shown: 1 "
                        "where the arm's own learning is not shown positive")
                     + "). Ranking: " + ", ".join(f"{r['arm']} {r['excess']:.2f}" for r in closest["ranking"]) + ".")
    lines += step_gain_lines(summary)
    lines += gate_signal_lines(summary, sum(len(d.report_questions) for d in documents) / max(len(documents), 1))
    lines += general_signal_lines(summary, partials)
    gate, rep = coverage["gate"], coverage["report"]
    lines += ["", f"The two halves: the shared self-edits restate {gate['in_self_edit']} of {gate['answers']} gate-half "
              f"answers and {rep['in_self_edit']} of {rep['answers']} report-half answers; mean position in the text "
              f"(0 start, 1 end) {gate['mean_position']:.2f} and {rep['mean_position']:.2f}."]
    for name in partial:
        p = partials[name]
        if not p["steps"]:
            lines += ["", f"{ARM_LABELS.get(name, name)}: started, but no document finished (no figure)."]
            continue
        kls = [k for k in p["kl_to_promoted"] if k is not None]
        vs = p.get("learning_vs_naive")
        lines += ["", f"{ARM_LABELS.get(name, name)}: stopped after {p['steps']} of {args.documents} documents "
                  f"({p['seconds_per_step']:.0f} s per step), so no forgetting figure. Learning on those documents "
                  f"{_fmt_ci(p['learning'])}"
                  + (f"; minus the naive arm's on the same documents {vs['mean_difference']:+.1f} "
                     f"[{vs['ci_low']:+.1f}, {vs['ci_high']:+.1f}], {vs['wins']}/{vs['losses']} wins/losses, "
                     f"n = {vs['n']}" if vs else "")
                  + (f". After its last finished step, report-half held-out perplexity "
                     f"{p['general_so_far']['perplexity_before']:.2f} -> {p['general_so_far']['perplexity_after']:.2f} "
                     f"({100 * p['general_so_far']['perplexity_rise']:+.1f}%), QA soft accuracy "
                     f"{p['general_so_far']['qa_soft_before']:.1f} -> {p['general_so_far']['qa_soft_after']:.1f}"
                     if p.get("general_so_far") else "")
                  + f". Promoted {p['promoted']} of {p['steps']}, at scales "
                  f"{', '.join(f'{x:.3g}' for x in p['scales']) or '-'}; KL(promoted || candidate) on the new "
                  "documents' texts, nats/token: "
                  + (f"{min(kls):.3f} to {max(kls):.3f} (mean {sum(kls) / len(kls):.3f})." if kls else "-.")]
    if not_run:
        lines += ["", "Not run (no figure from them here): " + "; ".join(ARM_LABELS.get(a, a) for a in not_run) + "."]
    lines += ["", f"JSON: `{json_path.name}`; chart: `{png_path.name}`.", ""]
    print("\n".join(lines))
    if not smoke:
        sys.path.insert(0, str(HERE))
        from results_file import append_section

        append_section(lines)


def step_gain_lines(summary) -> list[str]:
    """The step's own gain per arm (after its step minus just before it, report halves), and each gated arm's ratio
    to the naive arm's: a secondary view beside the goal, which is defined on learning against the base model."""
    from continual_report import ARM_LABELS, _ci as _fmt_ci, _mean_ci

    rows = {name: row for name, row in summary.items() if "step_learning" in row}
    if not rows:
        return []
    lines = ["", "Step gain (a document's report-half score right after its own step minus on the model the step "
             "started from; learning above is against the base model, so it also carries what earlier promotions "
             "changed):"]
    for name, row in rows.items():
        text = f"- {ARM_LABELS.get(name, name)}: {_fmt_ci(row['step_learning'])}"
        plast = row.get("plasticity_step")
        if plast:
            text += (f"; minus the same document learned alone {_fmt_ci(_mean_ci(plast['d']))}, slope over the stream "
                     f"{plast['slope']:+.2f} [{plast['slope_low']:+.2f}, {plast['slope_high']:+.2f}] points per document")
        ratio = row.get("step_learning_ratio")
        if ratio:
            text += ((f"; {ratio['mean']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}] of naive's" if ratio["judgeable"]
                      else "; the ratio to naive's is not judgeable (naive's step gain not shown positive)")
                     + "; minus naive, paired: " + _paired_text(row["step_learning_vs_naive"]))
        lines.append(text + ".")
    return lines


def gate_signal_lines(summary, questions_per_half: float) -> list[str]:
    """How well the gate half's gain predicts the report half's, for the arms that keep every candidate, and how many
    questions a half would need for that signal to be reliable."""
    from continual_report import ARM_LABELS, _ci as _fmt_ci

    rows = {name: row["gate_signal"] for name, row in summary.items() if "gate_signal" in row}
    if not rows:
        return []
    lines = ["", "The gate's signal (each step's gain on the gate half, as the gate scored the candidate, against its "
             "gain on the report half; arms that keep every candidate):"]
    for name, g in rows.items():
        rho = g["spearman"]
        lines.append(f"- {ARM_LABELS.get(name, name)}: gate half {_fmt_ci(g['gate_gain'])}, report half "
                     f"{_fmt_ci(g['report_gain'])}; rank correlation across documents {rho['mean']:+.2f} "
                     f"[{rho['low']:+.2f}, {rho['high']:+.2f}], n = {rho['n']}.")
    lines.append(f"- Read as the split-half reliability of halves of q = {questions_per_half:g} questions, a "
                 "correlation r asks for 4 q (1 - r) / r questions per half for a reliability of 0.8 (Spearman-Brown): "
                 + "; ".join(f"{ARM_LABELS.get(name, name)} {_questions_text(g['spearman'], questions_per_half)}"
                             for name, g in rows.items()) + ".")
    return lines


def general_signal_lines(summary, partials=None) -> list[str]:
    """How well the regression suite's gate half predicted its report half, step by promoted step (an arm stopped
    early on its finished steps)."""
    from continual_report import ARM_LABELS, _ci as _fmt_ci

    rows = {name: row["general_signal"] for name, row in {**summary, **(partials or {})}.items()
            if "general_signal" in row}
    if not rows:
        return []
    lines = ["", "The regression suite's two halves, per promoted step (held-out perplexity change in percent: what "
             "the gate read on its half, and what the step did to the report half):"]
    for name, g in rows.items():
        lines.append(f"- {ARM_LABELS.get(name, name)}{' (stopped early)' if name in (partials or {}) else ''}: "
                     f"gate half {_fmt_ci(g['gate'])}, report half "
                     f"{_fmt_ci(g['report'])}, report minus gate {_fmt_ci(g['report_minus_gate'])}, largest gap "
                     f"{g['largest_gap']:+.1f}, n = {g['n']} promoted steps.")
    return lines


def _questions_text(rho, questions_per_half: float) -> str:
    from continual_report import questions_for_reliability

    def fmt(r: float) -> str:
        q = questions_for_reliability(r, questions_per_half)
        return "undefined" if r != r else "no finite number" if q is None else f"{q:.0f}"

    return f"{fmt(rho['mean'])} (from {fmt(rho['high'])} at the CI's upper end to {fmt(rho['low'])} at its lower)"


def _goal_verdict(met: bool | None) -> str:
    if met is None:
        return ("forgetting and general loss within the limits, its own learning shown, the learning ratio not "
                "judgeable")
    return "met" if met else "not met"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="embedded | tiny | a model path")
    p.add_argument("--out", required=True, help="run directory (arms' steps, registries, logs; resumable)")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--jobs", type=int, default=1, help="arms run at once (separate processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per arm process")
    p.add_argument("--documents", type=int, default=24)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest self-edit")
    p.add_argument("--max-lines", type=int, default=4, help="self-edit lines kept per document")
    p.add_argument("--metric", default="soft_accuracy", choices=["soft_accuracy", "accuracy"])
    p.add_argument("--replay-ratio", type=float, default=1.0)
    p.add_argument("--anchor-weight", type=float, default=5.0)
    p.add_argument("--max-kl", type=float, default=0.7, help="rescale-kl: KL(promoted || candidate) limit, nats/token")
    p.add_argument("--rescale-floor", type=float, default=0.125)
    p.add_argument("--rescale-steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="run no arm: report --arms (finished) and --partial-arms (stopped early) as they are")
    p.add_argument("--partial-arms", default="", help="with --report-only: arms reported on their finished steps")
    p.add_argument("--restore-from", default=None, metavar="JSON",
                   help="first rebuild an empty --out from a report's continual_results.json (its settings, self-edits, "
                        "pinned data and finished arms), e.g. after the run directory was lost with its machine")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.worker:
        run_worker(args.worker, args)
        return
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        sys.exit(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    sys.path.insert(0, str(HERE))
    from results_file import commit as current_commit

    commit = current_commit()
    start = time.perf_counter()
    if args.fresh and args.restore_from is not None:
        sys.exit("--fresh with --restore-from: --fresh deletes --out, a restore needs it new or empty; drop --fresh "
                 "or pass another --out")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    if args.restore_from is not None:
        for note in restore_run(Path(args.restore_from), out, {k: getattr(args, k) for k in RUN_KEYS}):
            print(f"note: {note}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    start_run(args, out, commit)
    run_documents(out, args.documents)  # pinned before any arm process reads them
    run_suite_halves(out)
    partial = [a for a in args.partial_arms.split(",") if a and (out / f"arm-{a}.json").exists()]  # started ones
    for arm in sorted(set(a for a in args.partial_arms.split(",") if a) - set(partial)):
        print(f"note: --partial-arms {arm}: {out} has no arm-{arm}.json (never started here): reported as not run",
              flush=True)
    if not args.report_only:
        write_self_edits(args, out)
        run_arms(args, out, arms)
    report(args, out, arms, commit, time.perf_counter() - start, partial)


if __name__ == "__main__":
    main()
