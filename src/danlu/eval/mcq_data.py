"""Multiple-choice benchmark files as published: C-Eval, CMMLU and MMLU CSVs, and their subject lists.

    C-Eval   ROOT/{dev,val,test}/SUBJECT_{split}.csv   header id,question,A,B,C,D,answer[,explanation]
    CMMLU    ROOT/{dev,test}/SUBJECT.csv               header ,Question,A,B,C,D,Answer (unnamed index column)
    MMLU     ROOT/{dev,val,test}/SUBJECT_{split}.csv   no header: question,A,B,C,D,answer

The subject is the file name without the split suffix; its display name (the Chinese name for C-Eval and
CMMLU, which goes into the instruction line) and categories come from subjects.yaml beside this file, which
a user file of the same shape overrides. Every row is accounted for: a row that cannot be a question (too
few columns, no question, an answer that is not a letter) is rejected with its file and line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

LETTERS = ("A", "B", "C", "D")
FORMATS = ("ceval", "cmmlu", "mmlu")
DEFAULT_SPLIT = {"ceval": "val", "cmmlu": "test", "mmlu": "test"}  # C-Eval's test answers are not published


@dataclass
class Question:
    id: str
    subject: str
    question: str
    options: list[str]
    answer: str  # "A".."D"
    path: str
    line: int


@dataclass
class Subject:
    key: str
    name: str
    categories: list[str]
    questions: list[Question] = field(default_factory=list)
    dev: list[Question] = field(default_factory=list)


@dataclass
class McqData:
    format: str
    split: str
    subjects: list[Subject]
    rejected: list[dict]  # {"path", "line", "reason", "kind"}
    rejected_dev: list[dict]
    beyond_max: int = 0  # questions read but left out by max_questions


@lru_cache(maxsize=1)
def builtin_subjects() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).parent / "subjects.yaml").read_text(encoding="utf-8"))


def subject_table(fmt: str, override: str | None = None) -> dict[str, dict]:
    """subject key -> {"name", "categories"} for a format, the user's file winning key by key."""
    table = {k: dict(v) for k, v in builtin_subjects().get(fmt, {}).items()}
    if override:
        from danlu.config import load_yaml

        user = load_yaml(override) or {}
        if not isinstance(user, dict) or not all(isinstance(v, dict) for v in user.values()):
            raise ValueError(f"{override}: expected format -> subject -> {{name, categories}} mappings")
        for key, entry in (user.get(fmt) or {}).items():
            if not isinstance(entry, dict) or set(entry) - {"name", "categories"}:
                raise ValueError(f"{override}: {fmt}.{key} must be a mapping with 'name' and/or 'categories'")
            table.setdefault(key, {}).update(entry)
    return table


def sniff_format(path: Path) -> str:
    """ceval / cmmlu / mmlu from a CSV's first row."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        head = next(csv.reader(f), [])
    names = [h.strip() for h in head]
    lower = [h.lower() for h in names]
    if "question" in lower and "answer" in lower:
        return "cmmlu" if "Question" in names or (names and names[0] == "") else "ceval"
    return "mmlu"


def _subject_key(path: Path, split: str) -> str:
    stem = path.stem
    return stem[: -len(split) - 1] if stem.endswith(f"_{split}") else stem


def read_csv(path: Path, subject: str, fmt: str) -> tuple[list[Question], list[dict]]:
    """The questions of one file and the rejected rows (with line numbers)."""
    questions, rejected = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        cols = None
        if fmt != "mmlu":
            header = [h.strip().lower() for h in next(reader, [])]
            missing = [c for c in ("question", "a", "b", "c", "d", "answer") if c not in header]
            if missing:
                raise ValueError(f"{path}:1: the header lacks column(s) {', '.join(missing)} ({fmt} format: "
                                 f"{'id,question,A,B,C,D,answer' if fmt == 'ceval' else ',Question,A,B,C,D,Answer'})")
            cols = {c: header.index(c) for c in ("question", "a", "b", "c", "d", "answer")}
            cols["id"] = header.index("id") if "id" in header else (0 if header and header[0] == "" else None)
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if cols is None:  # MMLU: question,A,B,C,D,answer
                if len(row) < 6:
                    rejected.append({"path": str(path), "line": line, "kind": "too few columns",
                                     "reason": f"{len(row)} columns, expected 6"})
                    continue
                qid, q, opts, ans = str(len(questions)), row[0], row[1:5], row[5]
            else:
                need = max(v for v in cols.values() if v is not None)
                if len(row) <= need:
                    rejected.append({"path": str(path), "line": line, "kind": "too few columns",
                                     "reason": f"{len(row)} columns, expected at least {need + 1}"})
                    continue
                q, ans = row[cols["question"]], row[cols["answer"]]
                opts = [row[cols[c]] for c in ("a", "b", "c", "d")]
                qid = row[cols["id"]] if cols["id"] is not None else str(len(questions))
            ans = ans.strip().upper()
            if not q.strip():
                rejected.append({"path": str(path), "line": line, "kind": "empty question", "reason": "empty question"})
            elif ans not in LETTERS:
                rejected.append({"path": str(path), "line": line, "kind": "answer not A-D",
                                 "reason": f"answer {ans!r} is not one of A, B, C, D"})
            else:
                questions.append(Question(id=f"{subject}/{qid.strip() or len(questions)}", subject=subject,
                                          question=q, options=opts, answer=ans, path=str(path), line=line))
    return questions, rejected


def _split_files(root: Path, split: str) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{root}: no '{split}' folder (expected {root}/{split}/SUBJECT_{split}.csv; "
                                "set mcq.split to the split to score)")
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .csv files")
    return files


def _dev_file(root: Path, subject: str) -> Path | None:
    for name in (f"{subject}_dev.csv", f"{subject}.csv"):
        if (root / "dev" / name).exists():
            return root / "dev" / name
    return None


def load_mcq(paths: list[str], fmt: str = "auto", split: str | None = None, k_shot: int = 5,
             only: list[str] | None = None, subject_map: str | None = None,
             max_questions: int | None = None) -> McqData:
    """Every subject's questions (of `split`) and first k dev examples, from benchmark folders or CSV files."""
    files: list[tuple[Path, Path]] = []  # (csv, root)
    fmt_found = None if fmt == "auto" else fmt
    for entry in map(Path, paths):
        if entry.is_file():
            root = entry.parent.parent
            fmt_found = fmt_found or sniff_format(entry)
            files.append((entry, root))
            split = split or entry.parent.name
            continue
        if not entry.is_dir():
            raise FileNotFoundError(f"{entry}: no such file or folder")
        if fmt_found is None:
            probe = next(iter(sorted(entry.glob("*/*.csv"))), None)
            if probe is None:
                raise FileNotFoundError(f"{entry}: no SPLIT/*.csv files (C-Eval/CMMLU/MMLU layout)")
            fmt_found = sniff_format(probe)
        split = split or DEFAULT_SPLIT[fmt_found]
        files += [(f, entry) for f in _split_files(entry, split)]
    assert fmt_found and split
    table = subject_table(fmt_found, subject_map)
    subjects: dict[str, Subject] = {}
    rejected, rejected_dev = [], []
    beyond = 0
    for path, root in files:
        key = _subject_key(path, split)
        if only and key not in only:
            continue
        info = table.get(key, {})
        sub = subjects.setdefault(key, Subject(key=key, name=info.get("name", key.replace("_", " ")),
                                               categories=list(info.get("categories") or ["Other"])))
        qs, bad = read_csv(path, key, fmt_found)
        room = max(0, max_questions - len(sub.questions)) if max_questions else len(qs)
        sub.questions += qs[:room]
        beyond += len(qs) - min(room, len(qs))
        rejected += bad
        dev = _dev_file(root, key) if k_shot else None
        if dev is not None and dev != path and not sub.dev:
            dqs, dbad = read_csv(dev, key, fmt_found)
            sub.dev, rejected_dev = dqs[:k_shot], rejected_dev + dbad
    if only:
        unknown = sorted(set(only) - set(subjects))
        if unknown:
            raise ValueError(f"mcq.subjects: no files for {', '.join(unknown)} in {', '.join(paths)}")
    return McqData(format=fmt_found, split=split, subjects=[subjects[k] for k in sorted(subjects)],
                   rejected=rejected, rejected_dev=rejected_dev, beyond_max=beyond)
