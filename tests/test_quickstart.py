"""The quickstart recipe end to end (examples/quickstart.yaml): documents in, an evaluated model that answers out.

Checks: every step's report is complete and its counts add up; the SFT model beats the pretrained one on the SFT
test set, per task_type; the build report renders in a real headless browser with its plots drawn and makes no
request; the chat command the build prints works on its run folder; a second run skips every step; changing
the SFT learning rate reruns SFT, its evaluation, the compares and the report only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from danlu.cli import app
from danlu.pipeline import run_pipeline
from danlu.runs import check_counts, read_report

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "quickstart.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    quiet = []
    summary = run_pipeline(RECIPE, progress=False, echo=quiet.append, sets=[f"out={out}"])
    return {"out": out, "summary": summary}


@pytest.mark.slow
def test_every_step_finishes_with_counts_that_add_up(build):
    for s in build["summary"]:
        assert s["status"] == "ran", s
        report = read_report(s["out"])
        assert report is not None, s["step"]
        check_counts(report["stage"], report)
    names = [s["step"] for s in build["summary"]]
    assert names[-1] == "report" and "pretrain" in names and "sft ops" in names
    assert {"eval pretrain", "eval ops", "compare ops-vs-pretrain"} <= set(names)


@pytest.mark.slow
def test_sft_beats_the_pretrained_model_on_every_task_type(build):
    before, after = (read_report(build["out"] / "eval" / name / "gen")["results"] for name in ("pretrain", "ops"))
    tasks = [t for t in after if t != "(all)"]
    assert len(tasks) >= 5
    for task in tasks:
        metric = "label_accuracy" if "label_accuracy" in after[task] else "rougeL"
        assert after[task][metric] > before[task][metric], (task, metric, before[task], after[task])
    # the SFT model answers in the chat format: it ends its turn (the template's end-of-turn token) by itself
    limit = yaml.safe_load(RECIPE.read_text())["eval"]["gen"]["generation"]["max_new_tokens"]
    answers = [json.loads(x) for x in (build["out"] / "eval" / "ops" / "gen" / "answers.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert sum(a["answer_tokens"] < limit for a in answers) > 0.8 * len(answers)
    # held-out loss fell through pretraining and through SFT
    for stage in ("pretrain", "sft/ops"):
        evals = [json.loads(x) for x in (build["out"] / stage / "metrics.jsonl").read_text().splitlines()
                 if '"event": "eval"' in x]
        key = sorted(k for k in evals[0] if k.endswith("/loss"))[0]
        assert evals[-1][key] < evals[0][key], (stage, key, evals[0][key], evals[-1][key])


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="the report's browser test needs Debian's chromium (apt-get install "
                                               "chromium); .ci/run installs it")
def test_the_report_renders_offline_with_its_plots(build):
    from playwright.sync_api import sync_playwright

    page_file = build["out"] / "report.html"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        plots = page.evaluate("""() => [...document.querySelectorAll('.plot svg')].map(s => {
            const r = s.getBoundingClientRect(); return [r.width, r.height, s.querySelectorAll('path').length]; })""")
        headings = page.evaluate("() => [...document.querySelectorAll('h2')].map(h => h.textContent)")
        answers = page.evaluate("""() => { const h = [...document.querySelectorAll('h2')]
                .find(h => h.textContent === 'Sample answers');
            const t = h.nextElementSibling;
            return [...t.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent)); }""")
        browser.close()
    assert requests == [page_file.as_uri()]  # nothing but the page itself
    assert len(plots) >= 2 and all(w > 200 and h > 100 and n > 10 for w, h, n in plots), plots
    for section in ("Data", "Training", "Evaluation", "Sample answers", "Comparisons", "Model card"):
        assert section in headings, headings
    # the fine-tuned model answers in the chat format: a classification prompt gets a label letter alone, where
    # the pretrained model only continues the text
    head, rows = answers[0], answers[1:]
    col = {name: i for i, name in enumerate(head)}
    labels = [r for r in rows if r[col["task_type"]] == "classify/risk"]
    assert labels and any(r[col["ops: answer"]] in ("A", "B") for r in labels), answers
    assert not any(r[col["pretrain: answer"]] in ("A", "B") for r in labels), answers


@pytest.mark.slow
def test_the_printed_chat_command_talks_to_the_fine_tuned_run(build):
    """`danlu chat runs/quickstart/sft/ops`, as the build prints it: the run folder, not its model/ inside."""
    question = ("Is the command `rm -rf /var/cache/apt` read-only, or does it change the system? "
                "Answer with one letter: A for read-only, B for changes.")
    result = CliRunner().invoke(app, ["chat", str(build["out"] / "sft" / "ops"), "--temperature", "0"],
                                input=f"{question}\n/exit\n")
    assert result.exit_code == 0, result.output
    replies = [line.removeprefix(">").strip() for line in result.output.splitlines()]  # after the "> " prompt
    assert "A" in replies or "B" in replies, result.output


@pytest.mark.slow
def test_a_second_run_skips_and_a_new_sft_learning_rate_reruns_only_what_follows_it(build, tmp_path):
    out = build["out"]
    again = run_pipeline(RECIPE, progress=False, echo=lambda _: None, sets=[f"out={out}"])
    assert {s["status"] for s in again} == {"skipped"}
    lr = yaml.safe_load(RECIPE.read_text())["sft"][0]["optim"]["lr"]
    changed = run_pipeline(RECIPE, progress=False, echo=lambda _: None,
                           sets=[f"out={out}", f"sft.0.optim.lr={lr / 2}"])
    ran = {s["step"] for s in changed if s["status"] == "ran"}
    assert ran == {"sft ops", "eval ops", "compare ops-vs-pretrain", "compare ops-vs-previous-build", "report"}, ran
    # the previous build's SFT model and evaluation are kept beside the new ones, and compared
    assert list(out.glob("sft/ops.prev-*")) and (out / "eval" / "ops.previous" / "gen").is_dir()
    compare = read_report(out / "compare" / "ops-vs-previous-build")
    assert compare["counts"]["kept"] >= 1 and not compare.get("warnings")
