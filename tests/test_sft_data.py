"""`danlu data sft` / `danlu data pref`: LLaMA-Factory's own demo data read through its dataset_info.json with every
reject explained, the registry read strictly, row-level validation that names file, position and field, counts
that add up, and the task_type report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from danlu.data.sft import preference_data, sft_data
from danlu.data.sft.registry import RegistryError
from danlu.jsonl import BadLine
from danlu.records import read_records

LF = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "llamafactory"
needs_lf = pytest.mark.skipif(not (LF / "dataset_info.json").exists(),
                              reason=f"{LF} not found: the LLaMA-Factory demo data lives in ../shared beside the checkout")
SFT_SETS = ["alpaca_zh_demo", "alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"]
TOOL_AFTER_TEXT = "messages[#].role: a tool result after an assistant turn that calls no tool (messages[#] has no tool_calls)"


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_json(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


# --- LLaMA-Factory's demo data, unchanged ---------------------------------------------------------------------


@needs_lf
def test_llamafactory_sft_data_through_its_registry(tmp_path):
    types = {"alpaca_zh_demo": "qa", "alpaca_en_demo": "qa", "identity": "identity",
             "glaive_toolcall_en_demo": "tool_use", "glaive_toolcall_zh_demo": "tool_use"}
    rep = sft_data([LF], tmp_path / "out", datasets=SFT_SETS, task_types=types, progress=False,
                   replace={"name": "Danlu", "author": "the danlu team"})
    source = {name: json.loads((LF / f"{name}.json").read_text(encoding="utf-8")) for name in SFT_SETS}
    c = rep["counts"]
    assert c["in"] == sum(len(rows) for rows in source.values()) == 2690
    # the only rejects: two glaive_zh rows whose function call was translated into prose, then "observed"
    assert c["rejected"] == {TOOL_AFTER_TEXT: 2} and c["kept"] == 2688 and c["filtered"] == {}
    rejects = lines(tmp_path / "out" / "rejects.jsonl")
    assert [(r["dataset"], r["index"]) for r in rejects] == [("glaive_toolcall_zh_demo", 197),
                                                            ("glaive_toolcall_zh_demo", 293)]
    for r in rejects:
        turns = source["glaive_toolcall_zh_demo"][r["index"]]["conversations"]
        assert [t["from"] for t in turns[1:3]] == ["gpt", "observation"]
    records = lines(tmp_path / "out" / "sft.jsonl")
    assert not [r for _, _, r, _ in read_records([tmp_path / "out" / "sft.jsonl"], "sft", strict=True)
                if isinstance(r, BadLine)]
    by = {name: [r for r in records if r["source"] == name] for name in SFT_SETS}
    for name in ("alpaca_en_demo", "alpaca_zh_demo"):  # alpaca: instruction + "\n" + input, then output
        assert len(by[name]) == len(source[name])
        for rec, row in zip(by[name], source[name]):
            assert rec["messages"] == [
                {"role": "user", "content": "\n".join(t for t in (row["instruction"], row["input"]) if t)},
                {"role": "assistant", "content": row["output"]}]
            assert rec["task_type"] == "qa" and rec["tags"] == []
    assert all("{{" not in m["content"] and "}}" not in m["content"] for r in by["identity"] for m in r["messages"])
    assert sum("Danlu" in r["messages"][-1]["content"] for r in by["identity"]) > 70
    kept_glaive = [row for name in ("glaive_toolcall_en_demo", "glaive_toolcall_zh_demo")
                   for i, row in enumerate(source[name]) if not (name.endswith("zh_demo") and i in (197, 293))]
    glaive = by["glaive_toolcall_en_demo"] + by["glaive_toolcall_zh_demo"]
    for rec, row in zip(glaive, kept_glaive):  # function_call -> tool_calls, observation -> tool, tools parsed
        calls = [json.loads(t["value"]) for t in row["conversations"] if t["from"] == "function_call"]
        assert [c for m in rec["messages"] for c in m.get("tool_calls", [])] == calls
        assert [m["role"] for m in rec["messages"]].count("tool") == \
            [t["from"] for t in row["conversations"]].count("observation")
        assert rec.get("tools", []) == json.loads(row["tools"])
    assert sum(1 for r in glaive for m in r["messages"] if m.get("tool_calls")) == 211 + 216  # every function_call
    per = rep["per_task_type"]
    assert {k: v["records"] for k, v in per.items()} == {"qa": 1999, "tool_use": 598, "identity": 91}
    assert rep["unit"] == "characters" and rep["warnings"] == []


@needs_lf
def test_unreplaced_placeholders_are_kept_and_reported(tmp_path):
    rep = sft_data([LF / "dataset_info.json"], tmp_path / "out", datasets=["identity"], task_type="identity",
                   progress=False)
    assert rep["counts"]["kept"] == 91
    assert rep["placeholders"] == {"name": 77, "author": 60}
    assert any("{{name}} in 77" in w and "--replace" in w for w in rep["warnings"])


@needs_lf
def test_llamafactory_preference_and_kto_data_through_its_registry(tmp_path):
    rep = preference_data([LF], tmp_path / "out", datasets=["dpo_zh_demo,dpo_en_demo", "kto_en_demo"],
                          task_type="chat", progress=False)
    assert rep["counts"] == {"unit": "records", "in": 900, "kept": 900, "filtered": {}, "rejected": {}}
    assert rep["outputs"] == {"pref": 600, "kto": 300}
    pairs = lines(tmp_path / "out" / "pref.jsonl")
    src = [row for name in ("dpo_zh_demo", "dpo_en_demo") for row in json.loads((LF / f"{name}.json").read_text())]
    for rec, row in zip(pairs, src):
        assert rec["chosen"] == {"role": "assistant", "content": row["chosen"]["value"]}
        assert rec["rejected"] == {"role": "assistant", "content": row["rejected"]["value"]}
        assert [m["content"] for m in rec["messages"]] == [t["value"] for t in row["conversations"]]
        assert rec["messages"][-1]["role"] == "user"
    assert sum(r["messages"][0]["role"] == "system" for r in pairs) == 64 + 80
    kto = lines(tmp_path / "out" / "kto.jsonl")
    kto_src = json.loads((LF / "kto_en_demo.json").read_text())
    assert [r["desirable"] for r in kto] == [row["label"] for row in kto_src]
    assert [r["completion"]["content"] for r in kto] == [row["messages"][-1]["content"] for row in kto_src]
    assert rep["per_task_type"]["chat"]["desirable_share"] == 0.5


@needs_lf
def test_llamafactory_data_renders_under_a_real_template(tmp_path):
    """With a tokenizer every record is rendered as training will render it; the report counts its tokens."""
    from chat_templates import load_tokenizer, tokenizer_dir
    from danlu.tokenizer.chat import render_samples

    folder = tokenizer_dir("qwen2.5", str(tmp_path / "tok"))
    rep = sft_data([LF], tmp_path / "out", datasets=["glaive_toolcall_en_demo"], task_type="tool_use",
                   tokenizer=str(folder), progress=False)
    tok = load_tokenizer("qwen2.5", tmp_path / "tok")
    samples = [s for r in lines(tmp_path / "out" / "sft.jsonl")
               for s in render_samples(tok, r["messages"], r.get("tools"))]
    assert rep["counts"]["kept"] == 300 and rep["unit"] == "tokens"
    assert rep["tokens"] == sum(len(s.ids) for s in samples)
    assert rep["target_tokens"] == sum(s.n_targets for s in samples) < rep["tokens"]


# --- the registry, read strictly -----------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path):
    data = tmp_path / "data"
    write_json(data / "a.json", [{"instruction": "q", "input": "", "output": "a"}] * 4)
    write_json(data / "chat.json", [{"conversations": [{"from": "human", "value": "hi"},
                                                       {"from": "gpt", "value": "hello"}]}])
    info = {
        "ok": {"file_name": "a.json"},
        "typo": {"file_name": "chat.json", "format": "sharegpt"},
        "hub": {"hf_hub_url": "llamafactory/alpaca_en"},
        "gone": {"file_name": "nope.json"},
        "cols": {"file_name": "chat.json", "columns": {"messages": "conversations"}},
        "media": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"images": "images"}},
        "rank": {"file_name": "a.json", "ranking": True},
        "few": {"file_name": "a.json", "num_samples": 2},
        "split": {"file_name": "a.json", "split": "test"},
    }
    write_json(data / "dataset_info.json", info)
    return data


@pytest.mark.parametrize("name, stage, match", [
    ("typo", sft_data, r"unknown key 'format' \(did you mean 'formatting'\?\)"),
    ("hub", sft_data, "remote dataset; danlu never downloads"),
    ("gone", sft_data, r"file_name 'nope.json' does not exist"),
    ("cols", sft_data, r"columns.messages belongs to sharegpt/openai formatting.*did you mean to set formatting"),
    ("media", sft_data, "multimodal data is not supported"),
    ("rank", sft_data, "is ranking data: import it with `danlu data pref`"),
    ("ok", preference_data, "is SFT data"),
    ("split", sft_data, "a local file is one split"),
    ("okk", sft_data, r"no dataset 'okk' \(did you mean 'ok'"),
])
def test_registry_mistakes_stop_before_any_output(registry, tmp_path, name, stage, match):
    with pytest.raises(RegistryError, match=match) as err:
        stage([registry], tmp_path / "out", datasets=[name], task_type="qa", progress=False)
    assert str(registry / "dataset_info.json") in str(err.value)
    assert not (tmp_path / "out").exists()


def test_registry_needs_dataset_names_and_lists_the_local_ones(registry, tmp_path):
    with pytest.raises(RegistryError, match=r"local ones here: ok \(sft\), typo \(sft\), cols \(sft\).*rank \(ranking\)"):
        sft_data([registry], tmp_path / "out", task_type="qa", progress=False)


def test_num_samples_takes_a_seeded_subset_and_accounts_for_the_rest(registry, tmp_path):
    reps = [sft_data([registry], tmp_path / f"out{i}", datasets=["few"], task_type="qa", progress=False)
            for i in range(2)]
    assert reps[0]["counts"]["kept"] == 2 and reps[0]["counts"]["filtered"] == {"num_samples (dataset_info.json)": 2}
    assert lines(tmp_path / "out0" / "sft.jsonl") == lines(tmp_path / "out1" / "sft.jsonl")


def test_registry_columns_and_tags_mappings(tmp_path):
    data = tmp_path / "data"
    write_json(data / "hist.json", [{"q": "and now?", "a": "now this", "sys": "be brief",
                                     "hist": [["first?", "first answer"]]}])
    write_json(data / "roles.json", [{"msgs": [{"role": "sys", "text": "S"}, {"role": "me", "text": "hi"},
                                               {"role": "bot", "text": "hello"}]}])
    write_json(data / "dataset_info.json", {
        "hist": {"file_name": "hist.json", "columns": {"prompt": "q", "response": "a", "system": "sys",
                                                       "history": "hist"}},
        "roles": {"file_name": "roles.json", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                  "tags": {"role_tag": "role", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot",
                           "system_tag": "sys"}}})
    rep = sft_data([data], tmp_path / "out", datasets=["hist", "roles"], task_type="qa", progress=False)
    assert rep["counts"]["kept"] == 2
    hist, roles = lines(tmp_path / "out" / "sft.jsonl")
    assert hist["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first?"},
                                {"role": "assistant", "content": "first answer"},
                                {"role": "user", "content": "and now?"}, {"role": "assistant", "content": "now this"}]
    assert [(m["role"], m["content"]) for m in roles["messages"]] == [("system", "S"), ("user", "hi"),
                                                                     ("assistant", "hello")]


# --- row-level validation, counted ------------------------------------------------------------------------------


def test_every_bad_row_is_rejected_with_file_position_and_field(tmp_path):
    ok = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    openai_rows = [
        {"messages": ok},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
        '{"messages": [oops',
        {"messages": [{"role": "developer", "content": "be nice"}, {"role": "user", "content": [
            {"type": "text", "text": "weather "}, {"type": "text", "text": "in Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."}],
         "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
        {"messages": ok, "task_type": "a/b/c"},
    ]
    write_jsonl(tmp_path / "in" / "chat.jsonl", openai_rows)
    write_json(tmp_path / "in" / "share.json", [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
    ])
    write_json(tmp_path / "in" / "alpaca.json", [{"instruction": "q", "output": "a"}, {"instruction": "q"},
                                                 {"instruction": "q", "output": 3}, 7])
    rep = sft_data([tmp_path / "in"], tmp_path / "out", task_type="qa", progress=False)
    c = rep["counts"]
    assert c["in"] == 9 + 3 + 4 and c["in"] == c["kept"] + sum(c["rejected"].values()) and c["kept"] == 4
    assert c["rejected"] == {
        "messages[#].content: empty assistant answer": 1,
        "messages[#].role: two user turns in a row (messages[#] is unanswered)": 1,
        "messages[#].role: unknown role 'robot' (allowed: system, user, assistant, tool)": 1,
        "messages[#].content int, not a string": 1,
        "invalid JSON at column #": 1,
        "messages[#].tool_calls[#].function.arguments: not valid JSON": 1,
        "field 'task_type' must be a name with at most two levels ('a' or 'a/b')": 1,
        "conversations[#].from: unknown role 'bot' (this dataset's tags: human->user, gpt->assistant, "
        "system->system, observation->tool, function_call->function_call; set `tags` in dataset_info.json for "
        "others)": 1,
        "messages[#].role: the conversation starts with an assistant turn; a user turn must come first": 1,
        "output: missing (the response column; map another field with columns.response)": 1,
        "output: must be a string": 1,
        "expected an object": 1,
    }
    rejects = lines(tmp_path / "out" / "rejects.jsonl")
    where = {(Path(r["path"]).name, r.get("line", r.get("index"))) for r in rejects}
    assert where == {("alpaca.json", 1), ("alpaca.json", 2), ("alpaca.json", 3), ("chat.jsonl", 2),
                     ("chat.jsonl", 3), ("chat.jsonl", 4), ("chat.jsonl", 5), ("chat.jsonl", 6), ("chat.jsonl", 8),
                     ("chat.jsonl", 9), ("share.json", 1), ("share.json", 2)}
    assert any("messages[1].content" in r["reason"] for r in rejects)  # the field, with its index
    tool_chat = next(r for r in lines(tmp_path / "out" / "sft.jsonl") if r.get("tools"))
    assert tool_chat["messages"][0] == {"role": "system", "content": "be nice"}
    assert tool_chat["messages"][1]["content"] == "weather in Paris?"
    assert tool_chat["messages"][2]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"},
                                                       "id": "call_1"}]
    assert tool_chat["tools"] == [{"name": "get_weather", "parameters": {"type": "object"}}]
    assert set(rep["reject_examples"]) == set(c["rejected"])


def test_a_record_without_task_type_is_rejected_with_how_to_give_one(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}] * 3)
    rep = sft_data([tmp_path / "a.jsonl"], tmp_path / "out", progress=False)
    assert rep["counts"]["kept"] == 0 and sum(rep["counts"]["rejected"].values()) == 3
    (reason,) = rep["counts"]["rejected"]
    assert "missing field 'task_type'" in reason and "--task-type TYPE" in reason and "--task-type-field" in reason
    assert any("none of its 3 rows" in w for w in rep["warnings"])


def test_task_type_from_a_field_a_map_or_per_file(tmp_path):
    write_jsonl(tmp_path / "in" / "one.jsonl", [{"instruction": "q", "output": "a", "cat": c}
                                                for c in ("brainstorm", "math", "poetry", None)])
    write_jsonl(tmp_path / "in" / "two.jsonl", [{"instruction": "q", "output": "a"}])
    (tmp_path / "map.yaml").write_text("brainstorm: creative/brainstorm\nmath: reasoning/math\n", encoding="utf-8")
    rep = sft_data([tmp_path / "in"], tmp_path / "out", task_type_field="cat", task_type_map=str(tmp_path / "map.yaml"),
                   task_types={"two": "qa", "one.jsonl": "chat"}, progress=False)
    got = [r["task_type"] for r in lines(tmp_path / "out" / "sft.jsonl")]
    assert got == ["creative/brainstorm", "reasoning/math", "chat", "qa"]  # no field value: the file's type
    assert rep["counts"]["rejected"] == {"cat: value not in the task_type_map": 1}
    with pytest.raises(ValueError, match="neither a dataset nor a file"):
        sft_data([tmp_path / "in"], tmp_path / "out2", task_types={"three": "qa"}, progress=False)


def test_tags_and_source(tmp_path):
    write_jsonl(tmp_path / "noisy.jsonl", [{"instruction": "q", "output": "a", "labels": ["typos"]}])
    sft_data([tmp_path / "noisy.jsonl"], tmp_path / "out", task_type="qa", tags=["robustness"], tags_field="labels",
             source="ops", progress=False)
    (rec,) = lines(tmp_path / "out" / "sft.jsonl")
    assert rec["tags"] == ["robustness", "typos"] and rec["source"] == "ops"


def test_preference_rows_in_every_supported_shape(tmp_path):
    write_jsonl(tmp_path / "in" / "trl.jsonl", [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        {"prompt": "same?", "chosen": "yes", "rejected": "yes"},
        {"prompt": "tone?", "completion": "kindly", "label": True},
        {"messages": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": "a"},
         "rejected": {"role": "assistant", "content": "b"}, "task_type": "own"},
    ])
    write_json(tmp_path / "in" / "alpaca_rank.json", [{"instruction": "q", "input": "ctx", "chosen": "good",
                                                       "rejected": "bad"}])
    rep = preference_data([tmp_path / "in"], tmp_path / "out", task_type="chat", progress=False)
    assert rep["counts"]["rejected"] == {"chosen and rejected are identical: the pair teaches nothing": 1}
    pairs = lines(tmp_path / "out" / "pref.jsonl")
    assert [(p["messages"][-1]["content"], p["chosen"]["content"], p["rejected"]["content"], p["task_type"])
            for p in pairs] == [("q\nctx", "good", "bad", "chat"), ("2+2?", "4", "5", "chat"),
                                ("hi", "hello", "go away", "chat"), ("q", "a", "b", "own")]
    (kto,) = lines(tmp_path / "out" / "kto.jsonl")
    assert kto["completion"] == {"role": "assistant", "content": "kindly"} and kto["desirable"] is True
    sft_rows = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "q", "output": "a"}])
    rep = preference_data([sft_rows], tmp_path / "out2", task_type="chat", progress=False)
    assert list(rep["counts"]["rejected"]) == ["no chosen/rejected answers and no KTO tag: import SFT data with "
                                               "`danlu data sft`"]


def test_report_shows_the_one_letter_answer_trap(tmp_path):
    rows = [{"instruction": f"Question {i}? A) x B) y", "output": "AB"[i % 2], "kind": "mcq"} for i in range(20)]
    rows += [{"instruction": f"Explain {i}", "output": "A long explanation of the topic, step by step.", "kind": "qa"}
             for i in range(10)]
    write_jsonl(tmp_path / "mix.jsonl", rows)
    rep = sft_data([tmp_path / "mix.jsonl"], tmp_path / "out", task_type_field="kind", progress=False)
    per = rep["per_task_type"]
    assert per["mcq"]["records"] == 20 and per["mcq"]["short_answers"] == {"max": 3, "count": 20, "share": 1.0}
    assert per["qa"]["short_answers"]["count"] == 0 and per["mcq"]["share"] == round(20 / 30, 4)
    assert per["mcq"]["answers"]["p50"] == 1 and per["qa"]["answers"]["min"] == 46
    assert [w for w in rep["warnings"] if "'mcq'" in w] and not [w for w in rep["warnings"] if "'qa'" in w]


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from danlu.cli import app

    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "an answer"}])
    runner = CliRunner()
    res = runner.invoke(app, ["data", "sft", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "out"), "--task-type",
                              "qa", "--tag", "robustness", "--set", "short_answer=1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "sft-data: records in=1 kept=1" in res.output
    assert lines(tmp_path / "out" / "sft.jsonl")[0]["tags"] == ["robustness"]
    res = runner.invoke(app, ["data", "sft", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "o2"),
                              "--task-type", "qa", "--task-type", "chat"])
    assert res.exit_code != 0 and "a second default" in str(res.exception)
    res = runner.invoke(app, ["data", "pref", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "o3"),
                              "--task-type", "qa", "--no-progress"])
    assert res.exit_code == 0 and "pref-data: records in=1 kept=0" in res.output


def test_danlu_records_reimport_unchanged(tmp_path):
    """danlu's own records (with per-message loss_weight, tools, ids) are OpenAI-style rows: importing the output
    again gives the same records."""
    rows = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "old", "loss_weight": 0},
                          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "new", "loss_weight": 0.5}],
             "id": "r1", "task_type": "chat/multi", "tags": ["robustness"], "source": "mine"},
            {"instruction": "q", "output": "a", "task_type": "qa"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    sft_data([tmp_path / "in.jsonl"], tmp_path / "a", progress=False)
    first = lines(tmp_path / "a" / "sft.jsonl")
    assert first[0] == rows[0] and first[1]["task_type"] == "qa"
    rep = sft_data([tmp_path / "a"], tmp_path / "b", progress=False)  # the run folder: its records, not its report
    assert lines(tmp_path / "b" / "sft.jsonl") == first and rep["counts"]["in"] == 2


def test_record_contracts_for_tools_and_kto():
    from danlu.records import kind_of, problem

    ok = [{"role": "user", "content": "q"}]
    kto = {"messages": ok, "completion": {"role": "assistant", "content": "a"}, "desirable": True, "task_type": "qa"}
    assert kind_of(kto) == "kto" and problem(kto, "kto", strict=True) is None
    assert "desirable" in problem({**kto, "desirable": "yes"}, "kto", strict=True)
    assert "completion.role must be 'assistant'" in problem({**kto, "completion": ok[0]}, "kto", strict=True)
    wrapped = {"messages": ok + [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {}}}]}], "task_type": "qa"}
    assert "canonical form" in problem(wrapped, "sft", strict=True)
    bad_tools = {"messages": ok + [{"role": "assistant", "content": "a"}], "task_type": "qa", "tools": [{"x": 1}]}
    assert "tools[0] must be an object with a 'name'" in problem(bad_tools, "sft", strict=True)


def test_csv_and_parquet_rows(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("instruction,input,output\nq1,,a1\nq2,ctx,a2\n", encoding="utf-8")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"instruction": "q3", "input": "", "output": "a3"}]),
                       tmp_path / "in" / "b.parquet")
    except ImportError:
        pass
    rep = sft_data([tmp_path / "in"], tmp_path / "out", task_type="qa", progress=False)
    got = [[m["content"] for m in r["messages"]] for r in lines(tmp_path / "out" / "sft.jsonl")]
    assert got[:2] == [["q1", "a1"], ["q2\nctx", "a2"]] and got[2:] in ([], [["q3", "a3"]])
    assert rep["counts"]["rejected"] == {}
