"""Config validation, run folders, atomic writes, JSONL accounting and the CLI shell."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Literal

import pytest

from danlu.config import ConfigError, StrictModel, load_config
from danlu.jsonl import BadLine, JsonlWriter, read_jsonl
from danlu.records import document, stable_id
from danlu.runs import atomic_write_text, counts, read_report, start_run


class Inner(StrictModel):
    min_chars: int = 10


class Cfg(StrictModel):
    mode: Literal["fast", "exact"] = "fast"
    inner: Inner = Inner()


def test_misspelt_key_names_file_key_and_allowed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: fast\ninner:\n  min_char: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Cfg)
    msg = str(e.value)
    assert str(p) in msg and "inner.min_char" in msg and "min_chars" in msg


def test_bad_value_names_allowed_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: slow\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Cfg)
    assert "'mode'" in str(e.value) and "'fast'" in str(e.value) and "'exact'" in str(e.value)


def test_overrides_win_and_values_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: fast\n")
    cfg = load_config(p, Cfg, overrides={"mode": "exact", "inner": None})
    assert cfg.mode == "exact" and cfg.inner.min_chars == 10


def test_run_folder_report_marks_completion(tmp_path):
    run = start_run(tmp_path / "out", "demo", Cfg())
    assert read_report(run.dir) is None  # unfinished until the report lands
    run.log_metrics({"step": 1, "loss": 2.0})
    report = run.finish({"counts": counts(3, 2, {"too short": 1})})
    assert read_report(run.dir)["counts"]["kept"] == 2 and report["status"] == "complete"
    assert "mode: fast" in (run.dir / "config.yaml").read_text()
    assert json.loads((run.dir / "metrics.jsonl").read_text())["loss"] == 2.0
    # reopening the folder for a rerun removes the old report: a killed rerun is never taken as finished
    start_run(run.dir, "demo", Cfg())
    assert read_report(run.dir) is None


def test_a_failed_try_does_not_leave_its_log_handler_behind(tmp_path):
    start_run(tmp_path / "out", "demo", Cfg())  # raised before finish(): never closed
    run = start_run(tmp_path / "out", "demo", Cfg())
    run.log.info("once")
    run.finish({"counts": counts(0, 0)})
    assert (tmp_path / "out" / "run.log").read_text().count("once") == 1


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with JsonlWriter(target) as w:
            w.write({"a": 1})
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    atomic_write_text(target, "x\n")
    assert target.read_text() == "x\n"


def test_read_jsonl_accounts_for_every_line(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"text": "ok"}\n{bad json\n\n[1,2]\n{"text": 5}\n{"nope": 1}\n', encoding="utf-8")
    rows = list(read_jsonl(p, require={"text": str}))
    good = [r for _, r in rows if isinstance(r, dict)]
    bad = {ln: r.error for ln, r in rows if isinstance(r, BadLine)}
    assert len(good) == 1 and set(bad) == {2, 4, 5, 6}
    assert "invalid JSON" in bad[2] and "object" in bad[4]
    assert "field 'text' must be str" in bad[5] and "missing field 'text'" in bad[6]


def test_ids_are_stable_and_distinct():
    assert stable_id("a", "b", 0) == stable_id("a", "b", 0) != stable_id("a", "b", 1)
    doc = document("hi", "src", "x/y.txt", "txt", position=0, meta={"chars": 2, "source": "wiki", "path": "a/b"})
    assert set(doc) == {"id", "text", "source", "path", "format", "meta"}
    assert (doc["source"], doc["path"]) == ("src", "x/y.txt") and doc["meta"] == {"chars": 2, "source": "wiki", "path": "a/b"}


def _danlu(*args):
    return subprocess.run([sys.executable, "-m", "danlu.cli", *args], capture_output=True, text=True)


EXPECTED_COMMANDS = {
    "data": {"ingest", "clean", "dedup", "chunk", "stats", "tokenize", "sft", "pref", "verify"},
    "tokenizer": {"train", "expand", "compare"},
    "train": {"pt", "sft", "dpo", "rm"},
    "eval": {"run", "ppl", "mcq", "gen", "judge", "compare"},
}
TOP_COMMANDS = {"run", "chat", "serve", "export", "score"}
# write a plain folder, not a stage's run folder (export: a Hugging Face model folder)
NO_RUN_FOLDER = {("export",)}


def _leaf_commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_cli_help_lists_every_stage():
    """Every stage's sub-command is registered (checked on the command tree itself, not on help text that merely
    mentions the words) and answers --help in a real subprocess."""
    import typer

    from danlu.cli import app

    root = typer.main.get_command(app)
    assert set(EXPECTED_COMMANDS) | TOP_COMMANDS <= set(root.commands)
    for group, commands in EXPECTED_COMMANDS.items():
        assert commands <= set(root.commands[group].commands), (group, sorted(root.commands[group].commands))
    assert _danlu("--help").returncode == 0
    for group, commands in EXPECTED_COMMANDS.items():
        for cmd in sorted(commands):
            out = _danlu(group, cmd, "--help")
            assert out.returncode == 0 and "Usage" in out.stdout, (group, cmd, out.stderr)


def test_every_command_that_writes_a_run_folder_takes_set_and_force():
    """One shape for every command: a command with an output folder (-o) writes a stage's run folder, so it takes
    --force (to take over another stage's folder) and --set (a config override) like every other."""
    import typer

    from danlu.cli import app

    missing = []
    for path, cmd in _leaf_commands(typer.main.get_command(app)):
        opts = {o for p in cmd.params for o in p.opts}
        if "-o" in opts and path not in NO_RUN_FOLDER:
            missing += [(" ".join(path), flag) for flag in ("--force", "--set") if flag not in opts]
    assert not missing


def test_fallback_record_ids_differ_across_folders_and_ignore_path_spelling(tmp_path, monkeypatch):
    from danlu.records import record_id

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "x.jsonl", tmp_path / "b" / "x.jsonl"
    assert record_id({}, a, 1) != record_id({}, b, 1)
    monkeypatch.chdir(tmp_path)
    assert record_id({}, "a/x.jsonl", 1) == record_id({}, a, 1) != record_id({}, a, 2)
    assert record_id({"id": "own"}, a, 1) == "own" and record_id({"id": 7}, a, 1) == "7"
    assert record_id({"id": ""}, a, 1) == record_id({"id": None}, a, 1) == record_id({}, a, 1)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    from danlu.runs import atomic_dir

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half of v2")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1" and [p.name for p in tmp_path.iterdir()] == ["model"]
