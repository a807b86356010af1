"""Hostile inputs (issue #10): what a new user, a damaged disk or a crafted file does to danlu, kept as a
regression suite. Each test is the reproduction of one failure: it failed before the fix, and passes after.

non-UTF-8 file names, symlinked folders, unwritable and full outputs, damaged token stores, a store from another
tokenizer, traversal names, foreign run folders, file modes, duplicate YAML keys, content fingerprints in
`danlu run`, config mistakes caught up front, and the small visible ones (empty tokenizer corpus, vocab short of
the request, MFU over 100%, "at at column", --set attribution, bad records in the ingest summary).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from danlu.config import ConfigError, build_config, load_config, load_yaml
from danlu.data.ingest import ingest
from danlu.data.tokenize import tokenize
from danlu.jsonl import JsonlWriter, jsonl_files, read_jsonl
from danlu.names import display, safe_name
from danlu.runs import ForeignRunFolder, atomic_dir, atomic_write_text, read_report, start_run, taking_over
from danlu.train.store import StoreError, TokenStore, _sample_spans
from report_helpers import file_counts
from tokstore_helpers import make_tokenizer, write_docs

REPO = Path(__file__).resolve().parents[1]
GBK_NAME = "说明".encode("gbk") + b".txt"  # what a Windows zip of a Chinese corpus unpacks to on Linux


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=300)


@pytest.fixture()
def store(tmp_path, tok) -> Path:
    """A small finished store of several shards (tiny shard_mb)."""
    write_docs(tmp_path / "docs.jsonl", 40, max_words=60)
    tokenize([tmp_path / "docs.jsonl"], tmp_path / "store", tok, workers=1, shard_mb=0.002, progress=False)
    return tmp_path / "store"


def danlu(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the `danlu` entry point (danlu.cli.main, as the installed command does): exit code, stdout, stderr."""
    from danlu.cli import main

    monkeypatch.setattr(sys, "argv", ["danlu", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


def bytes_name_or_skip(folder: Path, name: bytes, data: bytes) -> Path:
    try:
        with open(os.fsencode(folder) + b"/" + name, "wb") as f:
            f.write(data)
    except OSError as e:  # e.g. macOS APFS refuses names that are not UTF-8
        pytest.skip(f"this file system does not take non-UTF-8 names: {e}")
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


# --- 2. a token store made with another tokenizer ----------------------------------------------------------


def test_store_from_another_tokenizer_is_refused_naming_both_paths_and_hashes(tmp_path, tok, store):
    from danlu.train.config import PretrainConfig
    from danlu.train.pretrain import pretrain

    def tokenizer_sha(folder: Path) -> str:  # what store.json records: blake2b-128 of tokenizer.json
        return hashlib.blake2b((folder / "tokenizer.json").read_bytes(), digest_size=16).hexdigest()

    other = make_tokenizer(tmp_path / "other-tok", vocab_size=340)  # bigger: the old vocab check passes
    cfg = build_config(PretrainConfig, {
        "model": {"preset": "tiny", "tokenizer": str(other)},
        "data": {"sources": [{"name": "ops", "store": str(store), "weight": 1.0}], "seq_len": 32, "heldout_rows": 0},
        "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
        "log": {"progress": False, "tensorboard": False}, "out": str(tmp_path / "pt")})
    with pytest.raises(ValueError) as err:
        pretrain(cfg)
    msg = str(err.value)
    assert str(store) in msg and str(other / "tokenizer.json") in msg
    assert tokenizer_sha(tok) in msg and tokenizer_sha(other) in msg
    assert not (tmp_path / "pt" / "model").exists()

    from danlu.train.sources import open_sources

    (opened,) = open_sources([{"name": "ops", "store": str(store), "weight": 1.0}], tokenizer_dir=tok)  # the right one
    assert len(opened.store) == 40


# --- 3. `danlu run` fingerprints content, and identical output stops the ripple ------------------------------


def _small_pipeline(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    (corpus / "ops").mkdir(parents=True)
    (corpus / "gen").mkdir()
    rng = random.Random(0)
    words = ("apt dpkg 软件包 内核 system 安装 config 服务 network 日志 root mount 文件 shell 配置 debian 升级 package "
             "the user boot grub disk 镜像 源 编译 模块").split()
    for i in range(4):
        (corpus / "ops" / f"note{i}.md").write_text(f"# 第{i}节\n\n" + " ".join(rng.choices(words, k=60)) + "。\n",
                                                   encoding="utf-8")
    with open(corpus / "gen" / "essays.jsonl", "w", encoding="utf-8") as f:
        for i in range(6):
            f.write(json.dumps({"id": f"g{i}", "text": " ".join(rng.choices(words, k=50)) + "。"}, ensure_ascii=False)
                    + "\n")
    old = time.time() - 600  # files older than the race window: their hashes are cached
    for p in corpus.rglob("*"):
        os.utime(p, (old, old))
    cfg = {"out": str(tmp_path / "out"),
           "sources": [{"name": "ops", "paths": [str(corpus / "ops")]},
                       {"name": "gen", "paths": [str(corpus / "gen")]}],
           "tokenizer": {"vocab_size": 300}, "chunk": {"max_tokens": 64},
           "report": False}  # the build report reads every step: it would rerun with any of them
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _ran(summary: list[dict]) -> set[str]:
    return {s["step"] for s in summary if s["status"] == "ran"}


def test_touch_reruns_nothing_and_a_changed_byte_reruns_only_what_its_output_changes(tmp_path):
    from danlu.pipeline import run_pipeline

    cfg = _small_pipeline(tmp_path)
    quiet = dict(progress=False, echo=lambda s: None)
    first = run_pipeline(cfg, **quiet)
    assert _ran(first) == {s["step"] for s in first} and len(first) == 10

    for p in (tmp_path / "corpus").rglob("*"):  # touch every input: same content
        os.utime(p)
    assert _ran(run_pipeline(cfg, **quiet)) == set()
    assert (tmp_path / "out" / ".fingerprints.json").exists()

    # trailing blanks the cleaner normalises away: ingest sees new text, clean's output is byte-identical,
    # so nothing after clean reruns
    note = tmp_path / "corpus" / "ops" / "note1.md"
    note.write_text(note.read_text(encoding="utf-8").replace("。\n", "。   \n"), encoding="utf-8")
    assert _ran(run_pipeline(cfg, **quiet)) == {"ingest ops", "clean ops"}

    # one real byte of one source: that source's chain and what reads its changed outputs, never the other's
    note.write_text(note.read_text(encoding="utf-8").replace("apt", "apk", 1), encoding="utf-8")
    third = {s["step"]: s for s in run_pipeline(cfg, **quiet)}
    assert {"ingest ops", "clean ops", "tokenizer", "chunk ops", "tokenize ops", "stats"} <= _ran(third.values())
    assert third["ingest gen"]["status"] == third["clean gen"]["status"] == "skipped"
    gen_reran = {"chunk gen", "tokenize gen"} & _ran(third.values())
    assert gen_reran == (set() if third["tokenizer"]["output"] == "unchanged" else {"chunk gen", "tokenize gen"})


def test_content_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    from danlu.pipeline_runner import ContentHashes

    f = tmp_path / "a.txt"
    f.write_text("hello " * 1000)
    old = time.time() - 600
    os.utime(f, (old, old))
    hashes = ContentHashes(tmp_path / "cache.json")
    first = hashes.tree(tmp_path / "a.txt")
    hashes.save()
    again = ContentHashes(tmp_path / "cache.json")
    assert again.tree(f) == first and again.read_bytes == 0  # unchanged: not read again
    os.utime(f)  # touched: read again, same hash
    assert again.tree(f) == first and again.read_bytes == f.stat().st_size
    f.write_text("hello " * 999 + "world ")
    assert again.tree(f) != first


# --- 4. duplicate YAML keys ----------------------------------------------------------------------------------


def test_a_key_given_twice_names_the_file_the_key_and_both_lines(tmp_path):
    from danlu.train.config import PretrainConfig

    cfg = tmp_path / "pt.yaml"
    cfg.write_text("model: {preset: tiny, tokenizer: t}\noptim:\n  lr: 3.0e-4\n  warm: 1\n  lr: 1.0\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, PretrainConfig)
    assert str(cfg) in str(err.value) and "'lr'" in str(err.value) and "lines 3 and 5" in str(err.value)


# --- 5. / 12. damaged token stores -----------------------------------------------------------------------------


def _shard(store: Path, k: int = 1) -> Path:
    return store / "shards" / f"{json.loads((store / 'store.json').read_text())['shards'][k]}.tokens"


def _refused(store: Path, file_part: str, damage: str) -> StoreError:
    with pytest.raises(StoreError) as err:
        TokenStore(store)
    msg = str(err.value)
    assert str(store) in msg and file_part in msg and "danlu data verify" in msg and "re-tokenize" in msg, msg
    assert damage in msg, msg
    return err.value


def test_a_shard_overwritten_with_zeros_is_refused_at_open_and_by_verify(store, monkeypatch, capsys):
    shard = _shard(store)
    shard.write_bytes(bytes(shard.stat().st_size))  # same size, all zeros
    _refused(store, shard.name, "content differs")
    code, out, err = danlu(monkeypatch, capsys, "data", "verify", store)
    assert code == 1 and "DAMAGED" in err and shard.name in err


def test_verify_passes_a_sound_store(store, monkeypatch, capsys):
    code, out, _ = danlu(monkeypatch, capsys, "data", "verify", store)
    assert code == 0 and "ok:" in out and "40 documents" in out


def test_a_flipped_byte_between_the_sampled_blocks_is_found_by_verify(tmp_path, tok, monkeypatch, capsys):
    write_docs(tmp_path / "big.jsonl", 300, max_words=400)
    tokenize([tmp_path / "big.jsonl"], tmp_path / "s", tok, workers=1, progress=False)  # one big shard
    shard = _shard(tmp_path / "s", 0)
    data = bytearray(shard.read_bytes())
    assert len(data) > 20 * 4096
    spans = _sample_spans(len(data))
    k = (spans[0][0] + spans[0][1] + spans[1][0]) // 4 * 2  # a low byte between the first two sampled blocks
    assert spans[0][1] < k < spans[1][0]
    data[k] ^= 0x01  # the id changes by one: still inside the vocabulary
    shard.write_bytes(bytes(data))
    TokenStore(tmp_path / "s")  # opening samples: cheap, and this byte is not in a sample
    code, _, err = danlu(monkeypatch, capsys, "data", "verify", tmp_path / "s")
    assert code == 1 and "full hash mismatch" in err


@pytest.mark.parametrize("damage", ["truncated", "odd size"])
def test_truncated_and_odd_sized_shards_are_named(store, damage):
    shard = _shard(store)
    data = shard.read_bytes()
    shard.write_bytes(data[:-4] if damage == "truncated" else data[:-1])
    _refused(store, shard.name, "odd size" if damage == "odd size" else "truncated")


def test_bad_store_json_is_named(store):
    (store / "store.json").write_text('{"format": 1, "dtype": "<u2", "vocab')
    _refused(store, "store.json", "not valid JSON")
    meta = {"format": 1, "dtype": "<u2", "vocab_size": 300, "bos_id": 0, "eos_id": 1, "pad_id": 2,
            "shards": ["../../../etc/passwd"]}
    (store / "store.json").write_text(json.dumps(meta))
    _refused(store, "store.json", "shard name")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_index_is_named(store, damage):
    import zipfile

    index = store / "shards" / f"{json.loads((store / 'store.json').read_text())['shards'][0]}.index.npz"
    data = bytearray(index.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]  # the zip's directory is gone
    else:  # a byte of the lengths array: the member's CRC no longer matches
        member = zipfile.ZipFile(index).getinfo("lengths.npy")
        local_extra = int.from_bytes(data[member.header_offset + 28 : member.header_offset + 30], "little")
        start = member.header_offset + 30 + len(member.filename) + local_extra
        data[start + member.file_size - 3] ^= 0xFF
    index.write_bytes(bytes(data))
    _refused(store, index.name, "damaged index")


def test_ids_above_the_vocabulary_are_a_store_error_not_an_index_error(store, monkeypatch, capsys):
    meta = json.loads((store / "store.json").read_text())
    meta.pop("checks", None)  # as a store written before checksums: nothing to compare at open
    (store / "store.json").write_text(json.dumps(meta))
    shard = _shard(store, 0)
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[3] = 5000  # vocab is 300
    ids.tofile(shard)
    opened = TokenStore(store)
    with pytest.raises(StoreError, match=r"id 5000, beyond the vocabulary of 300") as err:
        [opened.doc(i) for i in range(len(opened))]
    assert shard.name in str(err.value) and "danlu data verify" in str(err.value)
    code, _, out = danlu(monkeypatch, capsys, "data", "verify", store)
    assert code == 1 and "id 5000" in out


# --- 7. names that become path components -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../escaped", "..", ".", "/abs/path", "a/b", "a\\b", "", " padded",
                                  "C:evil", "nul\0byte"])
def test_traversal_and_unsafe_source_names_are_refused_up_front(tmp_path, name):
    from danlu.pipeline import run_pipeline

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("text " * 30)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out" / "x"), "sources": [{"name": name,
                                                                                   "paths": [str(tmp_path / "in")]}]}))
    with pytest.raises(ConfigError, match="source name"):
        run_pipeline(cfg, progress=False, echo=lambda s: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


def test_safe_names_admit_what_people_name_things():
    for ok in ("ops", "运维手册", "ops-v2.1", "general_replay", "a b"):
        assert safe_name(ok) == ok


# --- 8. a run folder belongs to its stage ----------------------------------------------------------------------


def test_another_stages_folder_is_refused_unless_forced(tmp_path, tok, monkeypatch, capsys):
    write_docs(tmp_path / "in" / "a.jsonl", 5)
    ingest([tmp_path / "in"], tmp_path / "ing", workers=1, progress=False)
    before = (tmp_path / "ing" / "report.json").read_bytes()
    code, _, err = danlu(monkeypatch, capsys, "data", "tokenize", tmp_path / "ing", "-o", tmp_path / "ing",
                         "--tokenizer", tok, "--workers", "1")
    assert code == 2 and "run folder of stage 'ingest'" in err and "--force" in err
    assert (tmp_path / "ing" / "report.json").read_bytes() == before  # untouched
    with pytest.raises(ForeignRunFolder):
        start_run(tmp_path / "ing", "chunk", {})
    assert (tmp_path / "ing" / "report.json").read_bytes() == before

    ingest([tmp_path / "in"], tmp_path / "ing", workers=1, progress=False)  # its own stage: reruns fine
    assert read_report(tmp_path / "ing")["stage"] == "ingest"
    with taking_over():
        start_run(tmp_path / "ing", "chunk", {}).finish({"counts": {"unit": "records", "in": 0, "kept": 0,
                                                                   "filtered": {}, "rejected": {}}})
    assert read_report(tmp_path / "ing")["stage"] == "chunk"
    code, _, err = danlu(monkeypatch, capsys, "data", "ingest", tmp_path / "in", "-o", tmp_path / "ing",
                         "--workers", "1", "--no-progress", "--force")
    assert code == 0 and read_report(tmp_path / "ing")["stage"] == "ingest", err


# --- 9. file modes honour the umask ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        run = start_run(tmp_path / "run", "probe", {"x": 1})
        atomic_write_text(run.path("artefact.txt"), "x")
        with JsonlWriter(run.path("records.jsonl")) as w:
            w.write({"a": 1})
        with atomic_dir(run.path("model")) as d:
            (d / "w.bin").write_bytes(b"0")
        run.finish({"counts": {"unit": "records", "in": 1, "kept": 1, "filtered": {}, "rejected": {}}})
    finally:
        os.umask(old)
    for name in ("config.yaml", "report.json", "artefact.txt", "records.jsonl", "run.log"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE((tmp_path / "run" / "model").stat().st_mode) == 0o777 & ~mask


# --- 10. file names that are not UTF-8 --------------------------------------------------------------------------


def test_a_gbk_file_name_is_imported_with_a_lossless_id_and_an_escaped_path(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    gbk = bytes_name_or_skip(corpus, GBK_NAME, "这是一个文件名为 GBK 编码的测试文件。".encode("utf-8"))
    bytes_name_or_skip(corpus, "說明".encode("big5") + b".txt", "另一个文件，名字是 Big5 编码。".encode("utf-8"))
    (corpus / "ok.txt").write_text("a file with a plain name", encoding="utf-8")
    report = ingest([corpus], tmp_path / "out", workers=1, progress=False)
    assert file_counts(report) == {"in": 3, "written": 3, "skipped": 0, "failed": 0}
    docs = [json.loads(x) for x in (tmp_path / "out" / "documents.jsonl").read_text(encoding="utf-8").splitlines()]
    paths = {d["path"] for d in docs}
    assert display(gbk.name) in paths and "\\x" in display(gbk.name)  # readable escapes, valid UTF-8 JSON
    assert len({d["id"] for d in docs}) == 3
    again = ingest([corpus], tmp_path / "again", workers=1, progress=False)
    assert again["counts"] == report["counts"]
    ids = [json.loads(x)["id"] for x in (tmp_path / "again" / "documents.jsonl").read_text().splitlines()]
    assert ids == [d["id"] for d in docs]  # stable across runs


def test_a_non_utf8_jsonl_name_flows_through_the_jsonl_stages(tmp_path, tok, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    src = tmp_path / "src.jsonl"
    write_docs(src, 6, bad_lines={2: "{broken"})
    bad = bytes_name_or_skip(folder, "数据".encode("gbk") + b".jsonl", src.read_bytes())
    assert jsonl_files([folder]) == [bad]
    report = tokenize([folder], tmp_path / "store", tok, workers=1, progress=False)
    assert report["counts"]["kept"] == 6 and sum(report["counts"]["rejected"].values()) == 1
    reject = json.loads((tmp_path / "store" / "rejects.jsonl").read_text(encoding="utf-8"))
    assert reject["path"] == display(bad) and reject["line"] == 2
    code, out, err = danlu(monkeypatch, capsys, "data", "tokenize", folder, "-o", tmp_path / "s2", "--tokenizer", tok,
                           "--workers", "1")
    assert code == 0 and "kept=6" in out, err


def test_a_lone_surrogate_in_json_text_is_a_bad_line_not_a_crash_later(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "ok \\ud83d\\ude00"}\n{"text": "bad \\ud800 half"}\n', encoding="utf-8")
    got = list(read_jsonl(f, require={"text": str}))
    assert got[0][1] == {"text": "ok 😀"} and "lone UTF-16 surrogate" in got[1][1].error


# --- 11. output folders that cannot be written ----------------------------------------------------------------


def test_an_output_folder_that_is_a_file_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("text")
    (tmp_path / "out").write_text("I am a file")
    code, _, err = danlu(monkeypatch, capsys, "data", "ingest", tmp_path / "in", "-o", tmp_path / "out", "--no-progress")
    assert code == 1 and err.count("\n") == 1 and str(tmp_path / "out") in err and "existing file" in err
    assert "Traceback" not in err and (tmp_path / "out").read_text() == "I am a file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_output_folder_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("text")
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o500)
    try:
        code, _, err = danlu(monkeypatch, capsys, "data", "ingest", tmp_path / "in", "-o", tmp_path / "out")
    finally:
        (tmp_path / "out").chmod(0o700)
    assert code == 1 and str(tmp_path / "out") in err and "permission" in err.lower() and "Traceback" not in err


def test_a_full_disk_mid_run_is_one_line_exit_1_and_recorded_in_run_log(tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE, like a full disk: every write past it fails)."""
    corpus = tmp_path / "in"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"f{i}.txt").write_text(f"document {i} " + "word " * 2000)

    def limit():  # the default SIGXFSZ action kills the process; ignored, the write fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    proc = subprocess.run([sys.executable, "-m", "danlu.cli", "data", "ingest", str(corpus), "-o", str(tmp_path / "o"),
                           "--workers", "1", "--no-progress"], preexec_fn=limit, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "documents.jsonl" in lines[0] and "size limit" in lines[0], proc.stderr
    log = (tmp_path / "o" / "run.log").read_text()
    assert "fatal:" in log and "File too large" in log
    assert read_report(tmp_path / "o") is None and not (tmp_path / "o" / "documents.jsonl").exists()
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]  # no temporaries left


def test_an_os_error_anywhere_in_a_training_stage_is_reported_and_logged(tmp_path, tok, store, monkeypatch, capsys):
    import danlu.train.loop as loop

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "pt" / "checkpoints" / "step-00000002"))

    monkeypatch.setattr(loop, "save_checkpoint", disk_full)
    cfg = tmp_path / "pt.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"preset": "tiny", "tokenizer": str(tok)},
        "data": {"sources": [{"name": "ops", "store": str(store), "weight": 1.0}], "seq_len": 32, "heldout_rows": 0},
        "train": {"max_steps": 2, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
        "checkpoint": {"every": 2}, "log": {"progress": False, "tensorboard": False}}))
    code, _, err = danlu(monkeypatch, capsys, "train", "pt", cfg, "-o", tmp_path / "pt")
    assert code == 1 and "step-00000002" in err and "disk is full" in err and "Traceback" not in err
    assert "No space left on device" in (tmp_path / "pt" / "run.log").read_text()


# --- 13. symlinked folders inside an input --------------------------------------------------------------------


def test_symlinked_folders_are_followed_and_loops_listed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.txt").write_text("a document that lives behind a symlinked folder", encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "own.txt").write_text("a document of the corpus itself", encoding="utf-8")
    (corpus / "shared").symlink_to(outside, target_is_directory=True)
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)
    report = ingest([corpus], tmp_path / "out", workers=1, progress=False)
    docs = {json.loads(x)["path"] for x in (tmp_path / "out" / "documents.jsonl").read_text().splitlines()}
    assert docs == {"own.txt", "shared/linked.txt"}
    assert [(s["path"], "loop" in s["reason"]) for s in report["skipped"]] == [("loop", True)]
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rejects] == ["loop"]

    write_docs(outside / "more.jsonl", 3)  # the JSONL stages' file lists follow it too
    assert [p.name for p in jsonl_files([corpus])] == ["more.jsonl"]
    (corpus / "gone.jsonl").symlink_to(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="broken symbolic link"):
        jsonl_files([corpus])


# --- 14. config mistakes caught before any work --------------------------------------------------------------


def test_a_misspelt_clean_preset_fails_before_ingest(tmp_path):
    from danlu.pipeline import run_pipeline

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("text " * 30)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "sources": [{"name": "a", "paths": [str(tmp_path / "in")]}],
                                   "clean": {"preset": "pretrian"}}))
    with pytest.raises(ConfigError, match=r"(?s)clean.*pretrian.*pretrain, sft"):
        run_pipeline(cfg, progress=False, echo=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_a_bad_clean_operator_argument_in_a_pipeline_lists_that_operators_keys(tmp_path):
    from danlu.pipeline import run_pipeline

    (tmp_path / "in").mkdir()
    clean_cfg = tmp_path / "clean.yaml"
    clean_cfg.write_text("steps:\n  - op: unicode\n  - op: length\n    min_charz: 20\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "sources": [{"name": "a", "paths": [str(tmp_path / "in")]}],
                                   "clean": {"config": str(clean_cfg)}}))
    with pytest.raises(ConfigError) as err:
        run_pipeline(cfg, progress=False, echo=lambda s: None)
    msg = str(err.value)
    assert "steps.1.min_charz" in msg and "min_chars" in msg and "form" not in msg  # length's keys, not unicode's
    assert not (tmp_path / "out").exists()


def test_a_missing_source_path_fails_before_the_first_source_is_ingested(tmp_path):
    from danlu.pipeline import run_pipeline

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("text " * 30)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "sources": [
        {"name": "a", "paths": [str(tmp_path / "in")]}, {"name": "b", "paths": [str(tmp_path / "nope")]}]}))
    with pytest.raises(FileNotFoundError, match="source 'b'"):
        run_pipeline(cfg, progress=False, echo=lambda s: None)
    assert not (tmp_path / "out").exists()


# --- 15. small but visible ---------------------------------------------------------------------------------------


def test_tokenizer_training_on_an_empty_file_is_refused(tmp_path):
    from danlu.tokenizer.train import train_tokenizer

    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no text to train on"):
        train_tokenizer([tmp_path / "empty.txt"], tmp_path / "tok", vocab_size=300)
    assert read_report(tmp_path / "tok") is None


def test_a_vocabulary_short_of_the_request_reports_both_sizes_and_warns(tmp_path):
    from danlu.tokenizer.train import train_tokenizer

    (tmp_path / "small.txt").write_text("apt install dpkg 软件包 安装\n" * 20, encoding="utf-8")
    report = train_tokenizer([tmp_path / "small.txt"], tmp_path / "tok", vocab_size=5000)
    assert report["requested_vocab_size"] == 5000 and report["vocab_size"] < 5000
    assert any("5,000" in w and f"{report['vocab_size']:,}" in w for w in report["warnings"])


def test_logged_mfu_never_exceeds_one_even_against_a_peak_measured_too_low():
    import torch

    from danlu.train.loop import LoopConfig, train
    from danlu.train.objectives import causal_lm
    from train_fixtures import ListStream, pack_rows, random_docs, tiny_llama

    torch.set_num_threads(1)
    model = tiny_llama()
    rows = pack_rows(random_docs(16), 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    seen = []
    train(model, opt, sched, ListStream(rows, 2), causal_lm(False),
          LoopConfig(max_steps=2, log_every=1, progress=False, flops_per_token=1e9, peak_flops=1.0),
          sink=seen.append)
    assert [m["mfu"] for m in seen if "mfu" in m] == [1.0, 1.0]


def test_expected_mfu_is_capped_and_the_peak_is_the_best_of_several_timings(monkeypatch):
    import torch

    import danlu.train.estimate as est

    assert est.mfu(1000.0, 1e9, peak=1e9) == 1.0 and est.mfu(1000.0, 1e6, peak=1e10) == 0.1
    _, figures = est.summary(10, 100, 1e9, 0.1, 100, 1, {"total": 1, "weights_grads_optimizer": 1,
                                                         "activations": 0, "logits": 0}, peak=1.0, world_size=1)
    assert figures["expected_mfu"] == 1.0

    # a machine busy during the first timings: a one-shot average would report the slow rate as the peak
    clock = {"t": 0.0, "calls": 0}

    def fake_perf_counter():
        return clock["t"]

    real_matmul = torch.Tensor.__matmul__

    def matmul(a, b):
        clock["calls"] += 1
        clock["t"] += 0.01 if clock["calls"] > 5 else 0.1  # the warm-up and two timings run 10x slower (load)
        return real_matmul(a, b)

    monkeypatch.setattr(est.time, "perf_counter", fake_perf_counter)
    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    n = 64
    peak = est.measure_matmul_flops(torch.float32, torch.device("cpu"), seconds=1.0, n=n, repeats=5)
    assert peak == pytest.approx(2 * n**3 / 0.01, rel=0.05)  # the quiet rate, not a mix


def test_json_errors_read_at_column_once(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "a",}\n')
    (_, bad), = read_jsonl(f)
    assert "at column" in bad.error and "at at" not in bad.error and str(f) in str(bad)


def test_set_errors_name_the_set_item_not_the_yaml_file(tmp_path):
    from danlu.train.config import PretrainConfig

    cfg = tmp_path / "pt.yaml"
    cfg.write_text("model: {preset: tiny, tokenizer: t}\ndata: {sources: [{name: a, store: s, weight: 1}]}\n"
                   "train: {max_steps: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, PretrainConfig, sets=["optim.lr=fast", "data.sources.0.weight=-1"])
    msg = str(err.value)
    assert "'optim.lr' (from --set optim.lr=fast)" in msg
    assert "'data.sources.0.weight' (from --set data.sources.0.weight=-1)" in msg


def test_the_ingest_summary_shows_bad_records(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.jsonl").write_text('{"text": "good record"}\n{oops\n{"text": 3}\n')
    code, out, err = danlu(monkeypatch, capsys, "data", "ingest", tmp_path / "in", "-o", tmp_path / "o",
                           "--workers", "1", "--no-progress")
    assert code == 0 and "bad_records=2" in out, err


def test_a_runs_config_yaml_feeds_back_to_its_command(tmp_path, tok):
    from danlu.train.config import PretrainConfig

    start_run(tmp_path / "r", "train-pt", {"model": {"preset": "tiny", "tokenizer": str(tok)},
                                                  "data": {"sources": [{"name": "a", "store": "s", "weight": 1}]},
                                                  "train": {"max_steps": 2}})
    assert load_config(tmp_path / "r" / "config.yaml", PretrainConfig, stage="train-pt").train.max_steps == 2
    with pytest.raises(ConfigError, match="for stage 'train-pt', not 'clean'"):
        load_yaml(tmp_path / "r" / "config.yaml", stage="clean")
