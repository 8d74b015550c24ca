"""The docs cannot rot: README.md stays short, the site builds in strict mode, and every snippet runs.

Snippets are the ```python, ```bash and ```sh blocks of README.md and of every page under docs/.

- A block right after a line `<!-- no-run: REASON -->` is not run (e.g. it needs a GPU, the network or hours);
  the reason is required, and the blocks are counted.
- Python blocks all run, in one subprocess (imports paid once), each in a fresh namespace and its own empty working
  directory, offline, on the tiny model of `seal_trl/testing.py`. Before running, the source is changed in exactly
  these documented ways (`substitute`):
  * a Hub model id under Qwen/, HuggingFaceTB/ or meta-llama/ becomes the tiny model's directory, and so does the
    embedded default (`load_model_and_tokenizer()` / `(None`, `InnerLoop.from_pretrained(None`);
  * the size keywords in `SHRINK` (`max_steps=8` -> `max_steps=1`, ...) get small values (each a whole
    keyword: `inner_epochs=` is shrunk, a plan's `epochs=` is not).
  Keywords keep their names, so a renamed keyword or function still fails. The working directory holds
  `my_squad.json` (a 4-passage SQuAD v1.1 file) and `notes/` (two text documents, one of them
  `notes/harrowmere.txt`) for the snippets that read them.
- Shell blocks: every command (continuation lines joined, comments dropped) must be one of
  * `seal-trl info`, or any `seal-trl ... --help`: run in full;
  * `seal-trl train --config C [--accelerate-config A] FLAGS` and
    `accelerate launch [--config_file F] recipes/seal.py --config C FLAGS`: the accelerate config must exist, and
    the recipe and flags are parsed by the recipe's own parser (SEALConfig, ModelConfig, data fields; a GPU
    recipe's `bf16: true` is parsed with `--bf16 false --use_cpu true` added, since this machine has no GPU);
    nothing loads or trains;
  * any other `seal-trl COMMAND ARGS`: parsed by the CLI's parser (an unknown flag or bad value fails); not run.
  Any other command fails the test: run it here, or mark its block no-run with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 200
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
HUB_MODEL = re.compile(r"""(["'])(?:Qwen|HuggingFaceTB|meta-llama)/[\w.\-]+\1""")
SHRINK = {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2, "steps_per_generation": 1,
          "num_iterations": 1, "limit": 2, "max_completion_length": 16, "inner_epochs": 1, "num_epochs": 1,
          "max_tokens": 150}


@dataclass
class Snippet:
    path: str
    line: int
    lang: str
    code: str
    no_run: str | None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def snippets(files: list[Path] | None = None, root: Path = ROOT) -> list[Snippet]:
    found = []
    for path in files or doc_files(root):
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if not match:
                i += 1
                continue
            start, lang = i, match.group(1)
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = NO_RUN.search(previous)
            if lang in ("python", "bash", "sh"):
                found.append(Snippet(str(path.relative_to(root)), start + 1, lang,
                                     "\n".join(lines[start + 1:i]) + "\n", marker.group(1) if marker else None))
            i += 1
    return found


def substitute(code: str, tiny: str) -> str:
    code = HUB_MODEL.sub(lambda m: repr(tiny), code)
    code = code.replace("load_model_and_tokenizer()", f"load_model_and_tokenizer({tiny!r})")
    code = re.sub(r"(load_model_and_tokenizer|InnerLoop\.from_pretrained)\(None", rf"\1({tiny!r}", code)
    for key, value in SHRINK.items():
        code = re.sub(rf"\b{key}=\d+", f"{key}={value}", code)
    return code


def commands(code: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _after(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def shell_items(snippet: Snippet) -> list[dict]:
    """What the worker does with each command of a shell block; raises ValueError for one it cannot check."""
    items = []
    for words in commands(snippet.code):
        if words[:1] == ["accelerate"] and words[1:2] == ["launch"] and "recipes/seal.py" in words:
            at = words.index("recipes/seal.py")
            launch, recipe = words[2:at], words[at + 1:]
            items.append({"do": "recipe", "accelerate": _after(launch, "--config_file"), "argv": recipe})
        elif words[:1] == ["seal-trl"]:
            argv = words[1:]
            if argv in (["info"], []) or "--help" in argv or "-h" in argv:
                items.append({"do": "cli-run", "argv": argv or ["--help"]})
            elif argv[0] == "train":
                rest = [w for w in argv[1:]]
                accelerate = _after(rest, "--accelerate-config")
                if accelerate is not None:
                    i = rest.index("--accelerate-config")
                    rest = rest[:i] + rest[i + 2:]
                items.append({"do": "recipe", "accelerate": accelerate, "argv": rest, "named": True})
            else:
                items.append({"do": "cli-parse", "argv": argv})
        else:
            raise ValueError(f"{snippet.name}: `{' '.join(words)}` is neither a seal-trl call nor `accelerate launch "
                             "recipes/seal.py`; run it in tests/test_docs.py or put `<!-- no-run: REASON -->` "
                             "right before its block")
    return items


WORKER = r'''
import contextlib, io, json, os, sys, tempfile, time, traceback
items = json.load(open(sys.argv[1]))
results = []
root = os.getcwd()
for item in items:
    here = tempfile.mkdtemp(dir=sys.argv[2])
    for name, text in item.get("files", {}).items():
        os.makedirs(os.path.join(here, os.path.dirname(name)), exist_ok=True)
        open(os.path.join(here, name), "w").write(text)
    os.chdir(here if item["do"] == "python" else root)
    out = io.StringIO()
    began = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):
            if item["do"] == "python":
                exec(compile(item["code"], item["name"], "exec"), {"__name__": "__main__"})
            elif item["do"] == "cli-run":
                from seal_trl.cli.main import main
                try:
                    code = main(item["argv"])
                except SystemExit as stop:
                    code = stop.code or 0
                assert code == 0, f"exit code {code}"
            elif item["do"] == "cli-parse":
                from seal_trl.cli.main import build_parser
                args, extra = build_parser().parse_known_args(item["argv"])
                assert not extra, f"unrecognized arguments: {extra}"
            elif item["do"] == "recipe":
                from seal_trl.cli.main import accelerate_config_path
                from seal_trl.cli.train import parse
                if item["accelerate"]:
                    if item.get("named"):
                        accelerate_config_path(item["accelerate"])
                    else:
                        assert os.path.isfile(item["accelerate"]), f"no accelerate config {item['accelerate']}"
                argv = list(item["argv"])
                config = argv[argv.index("--config") + 1]
                import yaml
                if yaml.safe_load(open(config)).get("bf16"):
                    argv += ["--bf16", "false", "--use_cpu", "true"]
                parse(argv)
        results.append({"name": item["name"], "ok": True, "seconds": time.perf_counter() - began})
    except BaseException as err:
        results.append({"name": item["name"], "ok": False, "seconds": time.perf_counter() - began,
                        "error": "".join(traceback.format_exception(err))[-3000:] + out.getvalue()[-1000:]})
    finally:
        os.chdir(root)
json.dump(results, open(sys.argv[3], "w"))
'''


def fixture_files() -> dict[str, str]:
    def passage(i):
        context = f"The river Velmora {i} runs through the valley of Ostrand and feeds three lakes."
        answer = {"text": "Ostrand", "answer_start": context.index("Ostrand")}
        return {"context": context, "qas": [{"id": f"q{i}", "question": "Which valley does it cross?",
                                             "answers": [answer]}]}

    squad = {"version": "1.1", "data": [{"title": f"Velmora {i}", "paragraphs": [passage(i)]} for i in range(4)]}
    return {"my_squad.json": json.dumps(squad),
            "notes/harrowmere.txt": "Harrowmere Lighthouse was designed by the engineer Mira Tollund. It was first "
                                    "lit in 1887 and stands on the cliffs north of Ostrand.",
            "notes/quorn.txt": "The Quorn expedition left port in 1874 with forty sailors and returned in 1876."}


def run_snippets(found: list[Snippet], tiny: str, tmp_path: Path) -> list[dict]:
    items = []
    for s in found:
        if s.no_run is not None:
            continue
        if s.lang == "python":
            items.append({"do": "python", "name": s.name, "code": substitute(s.code, tiny), "files": fixture_files()})
        else:
            items += [{**item, "name": s.name} for item in shell_items(s)]
    (tmp_path / "items.json").write_text(json.dumps(items))
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "work").mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT),
           "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "items.json"),
                           str(tmp_path / "work"), str(tmp_path / "results.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp_path / "results.json").read_text())


def test_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to a page under docs/"


def test_the_readme_links_point_at_files_that_exist():
    # the site's own links are checked by the strict build; README.md is outside it
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert "docs/results.md" in targets and "docs/trainers/seal_trainer.md" in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_every_snippet_is_run_or_marked_with_a_reason():
    found = snippets()
    assert any(s.path == "README.md" and s.lang == "python" for s in found)  # the reader sees the blocks
    assert all(s.no_run for s in found if s.no_run is not None)  # a marker needs a reason
    for s in found:
        if s.no_run is None and s.lang != "python":
            shell_items(s)  # raises for a command the worker cannot check


def test_every_runnable_snippet_runs(tiny_model_dir, tmp_path):
    found = snippets()
    results = run_snippets(found, str(tiny_model_dir), tmp_path)
    failed = [f"{r['name']}\n{r['error']}" for r in results if not r["ok"]]
    runnable = [s for s in found if s.no_run is None]
    print(f"{len(found)} snippets: {len(runnable)} run or parsed "
          f"({sum(s.lang == 'python' for s in runnable)} python), {len(found) - len(runnable)} marked no-run")
    for r in sorted(results, key=lambda r: -r["seconds"])[:8]:
        print(f"  {r['seconds']:6.1f} s  {r['name']}")
    assert not failed, "\n\n".join(failed)
    assert {r["name"] for r in results} == {s.name for s in runnable}


def test_a_renamed_keyword_fails_its_snippet(tiny_model_dir, tmp_path):
    # The check above must be able to fail: the README's SEALTrainer snippet with one keyword renamed.
    readme = next(s for s in snippets([ROOT / "README.md"]) if s.lang == "python" and "SEALConfig(" in s.code)
    broken = Snippet(readme.path, readme.line, "python", readme.code.replace("inner_epochs=", "inner_epoch="), None)
    assert broken.code != readme.code
    [result] = run_snippets([broken], str(tiny_model_dir), tmp_path)
    assert not result["ok"] and "inner_epoch" in result["error"]


def test_a_command_the_test_cannot_check_is_refused():
    with pytest.raises(ValueError, match="no-run"):
        shell_items(Snippet("x.md", 1, "bash", "rm -rf runs/\n", None))
    assert shell_items(Snippet("x.md", 1, "bash", "seal-trl registry list --registry reg/  # list\n", None)) == [
        {"do": "cli-parse", "argv": ["registry", "list", "--registry", "reg/"]}]


def test_the_site_builds_in_strict_mode_with_no_warning(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make setup installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    assert (tmp_path / "site" / "trainers" / "seal_trainer" / "index.html").exists()
