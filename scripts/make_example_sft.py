"""Derive the bundled example SFT set (examples/sft/) from the bundled ops corpus, by rule and deterministically.

    .venv/bin/python scripts/make_example_sft.py            # writes examples/sft/ops-sft.jsonl and ops-sft-test.jsonl
    .venv/bin/python scripts/make_example_sft.py --check    # exit 1 if the committed files differ from a fresh build

Every file under examples/corpus/ops is read with danlu's own ingest readers (so a man page, an HTML page, a GBK
text and Markdown all arrive as the Markdown the model is pretrained on), and facts are taken from the parts of it
that have a fixed shape:

- man pages: the NAME line (command -> purpose) and the option lists of OPTIONS / DESCRIPTION (option -> meaning:
  the first sentence of its description);
- the written notes: tables headed `| 命令 | 作用 | 类型 |` / `| Command | Purpose | Kind |` (command -> purpose,
  and read-only vs modifying), tables headed `| 选项 | 含义 |` / `| 配置项 | 含义 |` / `| Option | Meaning |`
  under a heading `<subject> 常用选项|常用配置项` / `Common <subject> options`, and error blocks of three lines
  `错误：… / 原因：… / 解决：…` (`Error: … / Cause: … / Fix: …`).

Each fact becomes one or two records (task_types command/purpose, option/meaning, error/fix, error/cause,
classify/risk with a one-letter answer, classify/tool with a one-word answer). The held-out test file gets whole
facts (chosen by a hash of the fact, ~12%), so no test question is a rephrasing of a training one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from danlu.data.ingest.base import Options
from danlu.data.ingest.formats import detect_format, reader
from danlu.records import read_records, stable_id
from danlu.text import join_separator

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "example-ops"  # every record's "source": one dataset name, so SFT source weights can address it
CJK = re.compile(r"[\u3400-\u9fff]")
TOOL_CAP = 25  # classify/tool questions per tool, so the answer distribution is not mostly "curl"


# --- facts ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    kind: str  # command | option | config | error | man-option
    key: str  # what decides the split: the command, "tool option", or the error text
    lang: str  # zh | en
    path: str  # the corpus file it came from, relative to the repo
    fields: tuple  # kind-specific values


def lang_of(text: str) -> str:
    return "zh" if CJK.search(text) else "en"


def plain(text: str) -> str:
    """Markdown emphasis off, whitespace collapsed (answers and questions are single lines), and no space before
    punctuation (the mdoc reader writes `.Ar command .` as "command .")."""
    text = re.sub(r"\*+", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"(?<=\S) ([.,;:)])(?=\s|$)", r"\1", re.sub(r"\( ", "(", text))


def first_sentence(text: str, lang: str) -> str:
    text = plain(text)
    if lang == "zh":
        end = text.find("。")
        return text if end < 0 else text[: end + 1]
    protected = re.sub(r"\b(e\.g|i\.e|etc|vs)\.", lambda m: m.group(1) + "\x00", text)
    m = re.search(r"(?<=[.!?])\s+(?=[A-Z(\"'])", protected)
    return (protected[: m.start()] if m else protected).replace("\x00", ".")


def sentence_end(text: str, lang: str) -> str:
    text = text.strip()
    if lang == "zh":
        return text if text.endswith(("。", "！", "？")) else text.rstrip("，；：") + "。"
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def read_markdown(path: Path) -> tuple[str, str]:
    """The file as danlu's ingest sees it: (format, Markdown text of all its documents)."""
    data = path.read_bytes()
    fmt = detect_format(path, data[:4096])
    result = reader(fmt)(data, path, Options())
    return fmt, "\n\n".join(d.text for d in result.docs)


# man pages ------------------------------------------------------------------------------------------------------


def sections(md: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    name = ""
    for line in md.split("\n"):
        if line.startswith("## "):
            name = plain(line[3:]).upper()
            continue
        out[name].append(line)
    return out


def man_facts(md: str, path: str, stem: str, owners: dict[str, set[str]]) -> list[Fact]:
    """NAME -> a command fact; each option with a usable first sentence -> an option fact. `owners` gets every
    option name of the page (described usably or not), so classify/tool never offers a tool that has it."""
    secs = sections(md)
    name_lines = [plain(x) for x in secs.get("NAME", secs.get("名称", [])) if x.strip()]
    facts = []
    tool = stem
    if name_lines:
        m = re.match(r"(.+?)\s+[-—–]\s+(.+)$", name_lines[0])
        if m:
            names, purpose = m.group(1), m.group(2)
            tool = names.split(",")[0].strip()
            purpose = purpose.split(" - ")[-1].strip()  # "zstd - zstd, zstdmt - Compress ..." style lines
            lang = lang_of(purpose)
            facts.append(Fact("command", tool, lang, path, (tool, sentence_end(purpose, lang))))
    for sec in ("OPTIONS", "选项", "DESCRIPTION", "描述"):
        for tag, desc in option_items(secs.get(sec, [])):
            for name in option_names(tag):
                owners[name].add(tool)
            lang = lang_of(desc)
            meaning = first_sentence(desc, lang)
            limit = (4, 90) if lang == "zh" else (12, 200)
            if not limit[0] <= len(meaning) <= limit[1] or meaning.endswith(":"):
                continue
            facts.append(Fact("man-option", f"{tool} {option_names(tag)[0]}", lang, path,
                              (tool, tag, sentence_end(meaning, lang))))
    return facts


def option_items(lines: list[str]):
    """(tag, description) for each option of a man page's Markdown: a `- TAG` list item (man .TP/.IP, mdoc .It)
    or a bold line on its own (DocBook .PP + bold), whose TAG starts with a dash, followed by indented text."""
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"- (.+)$", line) or re.match(r"(\*\*-.+)$", line)
        tag = plain(m.group(1).replace("\\", " ")) if m else ""  # the roff reader leaves `\ ` in .BI as "\\"
        i += 1
        if not is_option(tag) or len(tag) > 80:
            continue
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("  ")):
            text = lines[i].strip()
            if text and not text.startswith("```"):
                body.append(text)
            i += 1
        desc = ""
        for part in body:
            desc = desc + join_separator(desc, part) + part if desc else part
        if desc:
            yield tag, desc


def is_option(tag: str) -> bool:
    """'-4', '-L, --location <url>', '-C num' are options; '-1m:forever' (a list of validity examples) is not."""
    first = re.split(r"[\s,]", tag, maxsplit=1)[0]
    return bool(re.fullmatch(r"-\d|--?[A-Za-z?#:\[][\w#?=\[\].:<>-]*", first))


def option_names(tag: str) -> list[str]:
    """The option names in a tag ('-L, --location <url>' -> ['--location', '-L']), longest first."""
    names = re.findall(r"(?<![\w-])(--?[A-Za-z0-9#][\w#-]*)", tag)
    return sorted(set(names), key=lambda n: (-len(n), n)) or [tag]


# written notes --------------------------------------------------------------------------------------------------

COMMAND_HEADERS = {("命令", "作用", "类型"): "zh", ("command", "purpose", "kind"): "en"}
RISK = {"只读": "A", "修改": "B", "read-only": "A", "modifies": "B"}
OPTION_HEADERS = {("选项", "含义"): "option", ("配置项", "含义"): "config", ("option", "meaning"): "option"}
SUBJECT = [re.compile(r"^#*\s*`?(?P<s>[\w.-]+)`?\s*常用(?P<k>选项|配置项)$"),
           re.compile(r"^#*\s*Common `?(?P<s>[\w.-]+)`? (?P<k>options)$")]
ERROR = re.compile(r"^(?:错误：|Error:\s*)(.+)$")
CAUSE = re.compile(r"^(?:原因：|Cause:\s*)(.+)$")
FIX = re.compile(r"^(?:解决：|Fix:\s*)(.+)$")


def cells(row: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    return [p.strip().replace("\\|", "|").strip("`").strip() for p in parts]


def note_facts(md: str, path: str) -> list[Fact]:
    lines = [plain(x) if not x.lstrip().startswith("|") else x.strip() for x in md.split("\n")]
    facts: list[Fact] = []
    subject = None
    i = 0
    while i < len(lines):
        line = lines[i]
        for pattern in SUBJECT:
            m = pattern.match(line)
            if m:
                subject = m.group("s")
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"\|\s*-{3}", lines[i + 1]):
            header = tuple(c.lower() for c in cells(line))
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            facts += table_facts(header, rows, subject, path)
            subject = None
            continue
        m = ERROR.match(line)
        if m and i + 2 < len(lines) and CAUSE.match(lines[i + 1]) and FIX.match(lines[i + 2]):
            error = m.group(1).strip()
            lang = lang_of(line)
            cause, fix = CAUSE.match(lines[i + 1]).group(1), FIX.match(lines[i + 2]).group(1)
            facts.append(Fact("error", error, lang, path, (error, sentence_end(cause, lang), sentence_end(fix, lang))))
            i += 3
            continue
        i += 1
    return facts


def table_facts(header: tuple, rows: list[list[str]], subject: str | None, path: str) -> list[Fact]:
    out = []
    if header in COMMAND_HEADERS:
        lang = COMMAND_HEADERS[header]
        for cmd, purpose, kind in (r[:3] for r in rows if len(r) >= 3):
            out.append(Fact("command", cmd, lang, path, (cmd, sentence_end(purpose, lang), RISK[kind])))
    elif header in OPTION_HEADERS and subject:
        kind = OPTION_HEADERS[header]
        for key, meaning in (r[:2] for r in rows if len(r) >= 2):
            lang = lang_of(meaning)
            out.append(Fact(kind, f"{subject} {key}", lang, path, (subject, key, sentence_end(meaning, lang))))
    return out


def collect(corpus: Path) -> tuple[list[Fact], dict[str, set[str]]]:
    """All facts of the corpus, and for each option name the man pages' tools that have it."""
    facts: list[Fact] = []
    owners: dict[str, set[str]] = defaultdict(set)
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        fmt, md = read_markdown(path)
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()
        facts += man_facts(md, rel, path.name.split(".")[0], owners) if fmt == "man" else note_facts(md, rel)
    seen, unique = set(), []
    for f in facts:  # the first statement of a fact wins (files are read in sorted order)
        ident = (f.kind if f.kind != "man-option" else "option", f.key, f.lang)
        if ident not in seen:
            seen.add(ident)
            unique.append(f)
    return unique, owners


# --- records ------------------------------------------------------------------------------------------------------


def digest(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "big")


def pick(variants: list[str], *key: str) -> str:
    return variants[digest("variant", *key) % len(variants)]


def record(task_type: str, fact: Fact, question: str, answer: str, lang: str) -> dict:
    return {
        "id": stable_id("example-ops-sft", task_type, lang, fact.key, question),
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "task_type": task_type,
        "tags": [lang, "from:" + fact.path.removeprefix("examples/corpus/")],
        "source": SOURCE,
    }


def command_records(f: Fact) -> list[dict]:
    cmd, purpose = f.fields[0], f.fields[1]
    if f.lang == "zh":
        q = pick(["命令 `{c}` 是做什么的？", "`{c}` 这条命令有什么作用？"], f.key).format(c=cmd)
    else:
        q = pick(["What does the command `{c}` do?", "What is `{c}` used for?"], f.key).format(c=cmd)
    out = [record("command/purpose", f, q, purpose, f.lang)]
    if len(f.fields) > 2:  # commands from the notes' tables also say whether they change the system
        risk = f.fields[2]
        if f.lang == "zh":
            q = f"命令 `{cmd}` 是只读的，还是会修改系统？只回答一个字母：A 表示只读，B 表示会修改。"
        else:
            q = (f"Is the command `{cmd}` read-only, or does it change the system? "
                 "Answer with one letter: A for read-only, B for changes.")
        out.append(record("classify/risk", f, q, risk, f.lang))
    return out


def option_records(f: Fact) -> list[dict]:
    subject, key, meaning = f.fields
    if f.kind == "config":
        q = f"`{subject}` 的配置项 `{key}` 是什么意思？"
    elif f.lang == "zh":
        q = pick(["`{s}` 的选项 `{k}` 是什么意思？", "`{s}` 命令的 `{k}` 选项有什么作用？"], f.key).format(s=subject, k=key)
    else:
        q = pick(["What does the option `{k}` of `{s}` mean?", "In `{s}`, what does `{k}` do?"], f.key).format(
            s=subject, k=key)
    return [record("option/meaning", f, q, meaning, f.lang)]


def error_records(f: Fact) -> list[dict]:
    error, cause, fix = f.fields
    if f.lang == "zh":
        return [record("error/fix", f, f"遇到错误 {error} 应该怎么解决？", fix, "zh"),
                record("error/cause", f, f"出现错误 {error} 的原因是什么？", cause, "zh")]
    return [record("error/fix", f, f"How do I fix the error {error}?", fix, "en"),
            record("error/cause", f, f"What causes the error {error}?", cause, "en")]


def tool_records(facts: list[Fact], owners: dict[str, set[str]]) -> list[tuple[Fact, dict]]:
    """classify/tool: which man page's command has this option? Four candidates in the question: the answer plus
    three tools whose pages have none of the option's names (so exactly one candidate is right); at most TOOL_CAP
    options per tool."""
    by_tool: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_tool[f.fields[0]].append(f)
    tools = sorted(by_tool)
    out = []
    for tool in tools:
        for f in sorted(by_tool[tool], key=lambda f: digest("tool-cap", f.key))[:TOOL_CAP]:
            rng = random.Random(digest("candidates", f.key))
            others = [t for t in tools if t != tool and not any(t in owners[n] for n in option_names(f.fields[1]))]
            choices = rng.sample(others, 3) + [tool]
            rng.shuffle(choices)
            lang = f.lang if f.lang == "zh" else pick(["zh", "en"], "tool-lang", f.key)
            if lang == "zh":
                q = f"选项 `{f.fields[1]}` 属于哪个命令？从 {'、'.join(choices)} 中选择，只回答命令名。"
            else:
                q = (f"Which command has the option `{f.fields[1]}`? Choose from {', '.join(choices)} "
                     "and answer with the command name only.")
            out.append((f, record("classify/tool", f, q, tool, lang)))
    return out


def build(corpus: Path, test_percent: int) -> tuple[list[dict], list[dict]]:
    facts, owners = collect(corpus)
    split_of = {}
    records: list[tuple[str, dict]] = []
    for f in facts:
        split_key = ("option" if f.kind in ("man-option", "option", "config") else f.kind, f.key)
        split = "test" if digest("split", *split_key) % 100 < test_percent else "train"
        split_of[f] = split
        if f.kind == "command":
            recs = command_records(f)
        elif f.kind == "error":
            recs = error_records(f)
        else:
            recs = option_records(f)
        records += [(split, r) for r in recs]
    man_options = [f for f in facts if f.kind == "man-option"]
    records += [(split_of[f], r) for f, r in tool_records(man_options, owners)]
    train = [r for s, r in records if s == "train"]
    test = [r for s, r in records if s == "test"]
    return train, test


# --- output -------------------------------------------------------------------------------------------------------


def dumps(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def validate(paths: list[Path]) -> None:
    """danlu's own SFT contract, strict (what training needs): any bad record stops the build."""
    bad = [rec for _, _, rec, _ in read_records(paths, kind="sft", strict=True) if not isinstance(rec, dict)]
    if bad:
        sys.exit("\n".join(str(b) for b in bad[:10]))


def table(train: list[dict], test: list[dict]) -> str:
    counts: Counter = Counter()
    for split, recs in (("train", train), ("test", test)):
        for r in recs:
            counts[(r["task_type"], split, r["tags"][0])] += 1
    rows = [f"{'task_type':18} {'train zh':>9} {'train en':>9} {'test zh':>8} {'test en':>8} {'total':>6}"]
    for tt in sorted({k[0] for k in counts}):
        c = [counts[(tt, s, lang)] for s in ("train", "test") for lang in ("zh", "en")]
        rows.append(f"{tt:18} {c[0]:>9} {c[1]:>9} {c[2]:>8} {c[3]:>8} {sum(c):>6}")
    rows.append(f"{'all':18} {len(train):>19} {len(test):>17} {len(train) + len(test):>6}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "examples/corpus/ops")
    ap.add_argument("--out", type=Path, default=ROOT / "examples/sft")
    ap.add_argument("--test-percent", type=int, default=12, help="share of facts held out for the test file")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    train, test = build(args.corpus, args.test_percent)
    files = {args.out / "ops-sft.jsonl": dumps(train), args.out / "ops-sft-test.jsonl": dumps(test)}
    if args.check:
        stale = [str(p) for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        if stale:
            print("out of date (rerun scripts/make_example_sft.py): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("examples/sft is up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    validate(list(files))
    print(table(train, test))
    for path in files:
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
