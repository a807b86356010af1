"""Corpus-scale execution: one worker == two workers == Ray with two workers, byte for byte, in every output that
matters (kept records, rejects, duplicate clusters, chunks, token shards, stats), on a small corpus with planted
duplicates, bad lines and a long document whose bad section is cut; and dedup from keys alone (hash partitions,
connected components) equal to grouping the whole corpus at once."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from danlu.cli import app
from danlu.config import ConfigError
from danlu.data import dedup
from danlu.data.chunk import chunk
from danlu.data.clean import clean
from danlu.data.executor import Executor, ExecutorFields, auto_workers
from danlu.data.ingest import ingest
from danlu.data.stats import stats
from danlu.data.tokenize import tokenize
from danlu.records import document
from tokstore_helpers import make_tokenizer

HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多"
WORDS = ["apt", "dpkg", "kernel", "mount", "network", "package", "service", "config", "debian", "install"]
# when and where a run happened (and a token store's fingerprint, which has the input's mtime): all else is equal
VOLATILE = {"started", "elapsed_s", "seconds", "executor", "timings", "mb_per_s", "versions", "fingerprint",
            "encode_s"}


def _para(rng: random.Random, n: int) -> str:
    zh = "".join(rng.choice(HAN) for _ in range(n)) + "。"
    en = " ".join(rng.choice(WORDS) for _ in range(n // 6)) + "."
    return f"{zh} {en}"


def _corpus(path: Path) -> Path:
    """~70 documents: exact, whitespace-only and near duplicates, a short one, a long one with a repetitive
    section (cut by the repetition filter), an email (masked), bad JSON and a bad field."""
    rng = random.Random(7)
    docs = [document("\n\n".join(_para(rng, rng.randint(40, 120)) for _ in range(rng.randint(1, 6))), "ops",
                     f"ops/doc{i}.md", "markdown", i) for i in range(60)]
    docs += [document(docs[3]["text"], "ops", "ops/copy3.md", "markdown", 0),  # exact duplicate
             document(docs[5]["text"].replace("\n\n", "\n\n\n\n"), "ops", "ops/spaced5.md", "markdown", 0),
             document(docs[8]["text"][:-20] + "改动了结尾的几个字。", "ops", "ops/near8.md", "markdown", 0),
             document("太短", "ops", "ops/short.md", "markdown", 0),
             document(docs[9]["text"] + "\n\n联系 admin@mirror-team.cn。", "ops", "ops/mail.md", "markdown", 0)]
    long = [f"## 第{k}节\n\n" + "\n\n".join(_para(rng, 150) for _ in range(8)) for k in range(8)]
    long.insert(4, "## 重复\n\n" + "\n".join(["同一行重复出现 again and again"] * 200))
    docs.append(document("\n\n".join(long), "ops", "ops/book.md", "markdown", 0))
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    lines.insert(20, "{not json")
    lines.insert(40, json.dumps({"id": "bad", "text": 5}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def corpus(base) -> Path:
    return _corpus(base / "docs.jsonl")


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok", vocab_size=400)


@pytest.fixture()
def small_batches(monkeypatch):
    """Many batches even on a small corpus, so order across workers is really exercised."""
    import danlu.data.chunk as chunk_mod
    import danlu.data.clean.pipeline as clean_mod
    import danlu.data.stats as stats_mod

    for mod in (clean_mod, chunk_mod, stats_mod):
        monkeypatch.setattr(mod, "BATCH_CHARS", 4000)


def _run_all(corpus: Path, tok: Path, out: Path, **where) -> dict[str, bytes]:
    """clean -> chunk -> tokenize and stats, all on one executor, in `out` (always the same folder, so that
    reports naming their inputs can be compared); returns the outputs and removes the folder."""
    shutil.rmtree(out, ignore_errors=True)
    clean(corpus, out / "clean", preset="pretrain", progress=False, **where)
    chunk(out / "clean" / "clean.jsonl", out / "chunk", tokenizer=tok, max_tokens=64, progress=False, **where)
    tokenize([out / "chunk" / "chunks.jsonl"], out / "tokens", tok, shard_mb=0.01, progress=False, **where)
    stats(out / "chunk" / "chunks.jsonl", out / "stats", tokenizer=tok, html=False, **where)
    files = _outputs(out)
    shutil.rmtree(out)
    return files


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file a run writes that must not depend on the executor (JSON summaries without their timings)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name in ("run.log", "config.yaml"):
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_without_volatile(json.loads(data)), sort_keys=True).encode()
        files[str(p.relative_to(out))] = data
    return files


def _without_volatile(value):
    """A JSON value without its timings and environment, at any depth (ingest times every format)."""
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def _same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"outputs differ: {differ}"


@pytest.fixture(scope="module")
def local_one(corpus, tok, base) -> dict[str, bytes]:
    import danlu.data.chunk as chunk_mod
    import danlu.data.clean.pipeline as clean_mod
    import danlu.data.stats as stats_mod

    saved = [(m, m.BATCH_CHARS) for m in (clean_mod, chunk_mod, stats_mod)]
    try:
        for m, _ in saved:
            m.BATCH_CHARS = 4000
        return _run_all(corpus, tok, base / "run", workers=1)
    finally:
        for m, v in saved:
            m.BATCH_CHARS = v


def test_the_corpus_exercises_every_kind_of_removal(local_one):
    """The equivalence below means something: this corpus has bad lines, filtered records, a cut section,
    exact and near duplicates, masked PII, several token shards and several chunks per long document."""
    report = json.loads(local_one["clean/report.json"])
    c = report["counts"]
    assert sum(c["rejected"].values()) == 2 and c["filtered"]["length"] == 1
    assert c["filtered"]["exact_dedup"] == 2 and c["filtered"]["near_dedup"] >= 1
    ops = {o["op"]: o for o in report["operators"]}
    assert ops["repetition"]["sections_removed"] == 1 and ops["pii"]["records_changed"] == 1
    dups = [json.loads(line) for line in local_one["clean/duplicates.jsonl"].decode().splitlines()]
    assert {r["id"] for d in dups for r in d["replaced"]} >= {document("x", "ops", "ops/copy3.md", "", 0)["id"]}
    assert json.loads(local_one["tokens/report.json"])["shards"] >= 3
    assert json.loads(local_one["chunk/report.json"])["split_docs"] >= 1


def test_two_local_workers_write_what_one_does(local_one, corpus, tok, base, small_batches):
    _same(local_one, _run_all(corpus, tok, base / "run", workers=2))


@pytest.mark.slow
def test_a_stage_starts_and_stops_its_own_ray_instance(local_one, tmp_path, tok, small_batches):
    """Without a session or --address the stage starts Ray on this machine with `workers` CPUs, and stops it."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    docs = tmp_path / "clean.jsonl"
    docs.write_bytes(local_one["clean/clean.jsonl"])
    report = chunk(docs, tmp_path / "ray", tokenizer=tok, max_tokens=64, progress=False, executor="ray", workers=2)
    assert not ray.is_initialized()
    assert report["executor"] == {"executor": "ray", "address": "a Ray instance on this machine", "cpus": 2}
    chunk(docs, tmp_path / "one", tokenizer=tok, max_tokens=64, progress=False, workers=1)
    assert (tmp_path / "ray" / "chunks.jsonl").read_bytes() == (tmp_path / "one" / "chunks.jsonl").read_bytes()


@pytest.fixture(scope="module")
def ray_session():
    """A Ray instance on this machine with two worker CPUs, started by the test and stopped after it."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_with_two_workers_writes_what_one_local_worker_does(local_one, corpus, tok, base, small_batches,
                                                                ray_session):
    import danlu.data.executor as executor_mod

    used = []
    real = executor_mod._submit
    with pytest.MonkeyPatch.context() as mp:  # count the Ray tasks: the work really went to Ray
        mp.setattr(executor_mod, "_submit", lambda fn, item, cwd: used.append(fn.__name__) or real(fn, item, cwd))
        ray_run = _run_all(corpus, tok, base / "run", executor="ray")
    assert {"_clean_batch", "_chunk_batch", "_write_shard", "_stats_batch", "group_pairs"} <= set(used)
    _same(local_one, ray_run)


def test_ingest_on_ray_and_two_workers_equals_one(tmp_path, ray_session):
    src = tmp_path / "in"
    rng = random.Random(3)
    for i in range(12):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}.md").write_text(f"# 标题 {i}\n\n" + _para(rng, 80), encoding="utf-8")
    (src / "empty.txt").write_bytes(b"")  # fails: accounted the same everywhere
    runs = {}
    for name, where in (("one", {"workers": 1}), ("two", {"workers": 2}), ("ray", {"executor": "ray"})):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        ingest([src], tmp_path / "out", progress=False, **where)
        runs[name] = _outputs(tmp_path / "out")
    _same(runs["one"], runs["two"])
    _same(runs["one"], runs["ray"])


def test_a_ray_task_that_kills_its_worker_fails_alone(ray_session):
    """As in the local pool: the other tasks' results come back in order, the dead one is ItemFailed."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers need not import this module
    with Executor("ray") as ex:
        results = [r for _, r in ex.map(_die_on_three, range(6), window=3)]
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50]
    assert type(results[3]).__name__ == "ItemFailed" and "worker" in results[3].reason


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)
    return 10 * x


def test_the_cli_takes_workers_and_executor(local_one, corpus, tmp_path, small_batches, ray_session):
    for flags in (["--workers", "2"], ["--executor", "ray"]):
        out = tmp_path / flags[-1]
        result = CliRunner().invoke(app, ["data", "clean", str(corpus), "-o", str(out), "--preset", "pretrain",
                                          "--no-progress", *flags])
        assert result.exit_code == 0, result.output
        assert (out / "clean.jsonl").read_bytes() == local_one["clean/clean.jsonl"]
    result = CliRunner().invoke(app, ["data", "clean", str(corpus), "-o", str(tmp_path / "x"), "--address", "auto"])
    assert result.exit_code != 0 and "--executor ray" in str(result.exception)



def test_every_data_command_takes_the_executor_flags(local_one, tok, tmp_path, ray_session):
    """chunk, tokenize, stats and ingest from the CLI on Ray (the test's session) write what one local worker
    wrote through the Python API, and say where they ran."""
    docs = tmp_path / "clean.jsonl"
    docs.write_bytes(local_one["clean/clean.jsonl"])
    ray_flags = ["--executor", "ray", "--workers", "2"]
    commands = {
        "chunk": ["chunk", str(docs), "--tokenizer", str(tok), "--max-tokens", "64", "--no-progress"],
        "tokens": ["tokenize", str(tmp_path / "chunk" / "chunks.jsonl"), "--tokenizer", str(tok), "--shard-mb", "0.01"],
        "stats": ["stats", str(tmp_path / "chunk" / "chunks.jsonl"), "--tokenizer", str(tok), "--set", "html=false"],
        "ingest": ["ingest", str(tmp_path / "chunk" / "chunks.jsonl"), "--no-progress"],
    }
    for name, args in commands.items():
        result = CliRunner().invoke(app, ["data", args[0], "-o", str(tmp_path / name), *args[1:], *ray_flags])
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert json.loads((tmp_path / name / "report.json").read_text())["executor"]["executor"] == "ray"
    assert (tmp_path / "chunk" / "chunks.jsonl").read_bytes() == local_one["chunk/chunks.jsonl"]
    shards = {k: v for k, v in _outputs(tmp_path / "tokens").items() if not k.endswith(".json")}
    assert shards and shards == {k[len("tokens/"):]: v for k, v in local_one.items()
                                 if k.startswith("tokens/") and not k.endswith(".json")}
    stats_report = json.loads((tmp_path / "stats" / "report.json").read_text())
    want = json.loads(local_one["stats/report.json"])
    for key in ("counts", "characters", "tokens", "per_source", "duplicates"):
        assert stats_report[key] == want[key], key


def test_danlu_run_takes_the_executor_without_rerunning_or_changing_anything(corpus, tok, tmp_path, ray_session):
    """`executor:` in a recipe reaches every data step; switching it (local 1 worker -> Ray) reruns nothing,
    since the outputs are the same wherever they are made; an address without `executor: ray` fails up front."""
    import yaml

    from danlu.pipeline import run_pipeline

    recipe = tmp_path / "build.yaml"
    recipe.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "report": False,
                                      "sources": [{"name": "ops", "paths": [str(corpus)]}],
                                      "tokenizer": {"path": str(tok)}, "chunk": {"max_tokens": 64},
                                      "executor": {"workers": 2}}))
    first = run_pipeline(recipe, progress=False, echo=lambda s: None)
    assert {s["status"] for s in first} == {"ran"}
    for step in ("ingest/ops", "clean/ops", "chunk/ops", "tokens/ops", "stats"):
        assert json.loads((tmp_path / "out" / step / "report.json").read_text())["executor"] == \
            {"executor": "local", "workers": 2}, step
    again = run_pipeline(recipe, progress=False, echo=lambda s: None, sets=["executor.executor=ray"])
    assert {s["status"] for s in again} == {"skipped"}
    with pytest.raises(ConfigError, match="executor.executor: ray"):
        run_pipeline(recipe, progress=False, echo=lambda s: None, sets=["executor.address=auto"])


# --- dedup from keys alone ---------------------------------------------------------------------------------


def _reference_lsh(sig: np.ndarray, bands: int, rows: int, skip: list[bool]) -> np.ndarray:
    """The whole-corpus grouping (dedup before keys and partitions): per band a dict of band keys, a plain
    union-find whose roots are the smallest index."""
    parent = list(range(len(sig)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    idx = np.flatnonzero(~np.asarray(skip))
    for band in range(bands):
        groups: dict[bytes, int] = {}
        for i in idx.tolist():
            a, b = find(groups.setdefault(sig[i, band * rows : (band + 1) * rows].tobytes(), i)), find(i)
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(sig))])


def test_partitioned_band_join_equals_grouping_everything_at_once():
    rng = random.Random(11)
    texts = ["".join(rng.choice(HAN) for _ in range(rng.randint(30, 300))) for _ in range(120)]
    texts += [t[:-3] + "变了字" for t in texts[:40:3]] + [texts[7]] * 3 + ["", "   "]
    texts += [texts[-4][:-2] + "又改"]  # a chain: copy of a near copy
    sig = dedup.signatures(texts, ngram=3)
    bands, rows = dedup.lsh_params(0.6, 128)
    skip = [not t.strip() for t in texts]
    want = _reference_lsh(sig, bands, rows, skip)
    assert (want != np.arange(len(texts))).sum() >= 15  # real clusters
    for parts in (1, 2, 7):
        assert dedup.lsh_clusters(sig, bands, rows, skip=skip, parts=parts).tolist() == want.tolist()
    keys = dedup.dedup_keys(texts, near=[(128, 3, 1)])
    assert np.array_equal(keys.near[(128, 3, 1)], sig) and keys.empty.tolist() == skip
    for parts in (1, 3):
        assert dedup.key_clusters(keys.exact, parts=parts).tolist() == dedup.exact_clusters(texts).tolist()


def test_exact_keys_group_what_normalisation_makes_equal():
    keys = dedup.dedup_keys(["Hello  World", "hello world", "ＨＥＬＬＯ world\n", "other"]).exact
    assert dedup.key_clusters(keys).tolist() == [0, 0, 0, 3]


def test_auto_workers_follow_cores_and_input_size(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert auto_workers(3, 10) == 3  # asked for
    assert auto_workers(0, 1000) == 1  # a small input: no pool to start
    assert auto_workers(0, 10 << 30) == 8 and auto_workers(0, None) == 8
    with pytest.raises(ConfigError, match="--executor ray"):
        Executor.from_options(ExecutorFields(address="auto"))


def test_survivors_keep_keys_not_texts():
    """What dedup holds per surviving record is bounded (keys, id, counts), whatever its length."""
    import danlu.data.clean.pipeline as P
    from danlu.data.clean.config import load_clean_config

    cfg = load_clean_config(None, preset="pretrain")
    rng = random.Random(1)
    long_text = "\n\n".join(_para(rng, 120) for _ in range(800))  # ~200,000 characters of passing text
    job = P._Job(cfg, [("x.jsonl", 1, document(long_text, "s", "p", "txt", 0), "document")], True, [(128, 5, 1)])
    res = P._clean_batch(job)
    store = P._Survivors()
    store.add(res)
    assert len(store) == 1 and store.dedup_chars[0] == len(res.kept[0]["text"]) == len(long_text)
    assert len(pickle.dumps(store)) < 2000  # not the 200,000 characters
    held = store.keys()
    assert held.exact.nbytes == 16 and held.near[(128, 5, 1)].nbytes == 512
