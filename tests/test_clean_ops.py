"""Each cleaning operator on crafted inputs."""

from __future__ import annotations

import random

import pytest

from danlu.data.clean import load_clean_config
from danlu.data.clean.base import changed_chars
from danlu.data.clean.filters import BadWords, CharRatio, Length, SFTAnswer
from danlu.data.clean.repetition import Repetition
from danlu.data.clean.langid import LangId
from danlu.data.clean.markdown import blocks, code_spans
from danlu.data.clean.normalize import Invisible, Punctuation, TraditionalToSimplified, Unicode, Whitespace
from danlu.data.clean.pii import PII, valid_id_card

MARKDOWN = """# 安装指南

Debian 是一个自由的操作系统。它由志愿者维护。
第二行属于同一段落。

- 第一项：apt update
- 第二项：apt install vim
  - 嵌套项

| 命令 | 作用     |
|------|----------|
| ls   | 列出文件 |

```bash
for f in *.txt;  do
    echo   "$f"


done
```

    indented   code   keeps   its   spaces

最后一段。"""


def test_whitespace_preserves_clean_markdown_exactly():
    assert Whitespace().apply(MARKDOWN) == MARKDOWN


def test_whitespace_collapses_runs_but_keeps_structure():
    messy = "第一段  有   多余空格。   \r\n第一段第二行。\n\n\n\n\n第二段。\n\n```\na    b\n\n\n\nc\n```\n\n\n"
    out = Whitespace().apply(messy)
    assert out == "第一段 有 多余空格。\n第一段第二行。\n\n第二段。\n\n```\na    b\n\n\n\nc\n```"
    assert "\n" in out and out.count("\n\n") >= 2  # newlines survive: no "classical Chinese" wall of text


def test_whitespace_optional_cjk_space_removal():
    assert Whitespace(remove_space_between_cjk=True).apply("中 文 text 测 试") == "中文 text 测试"
    assert Whitespace().apply("中 文") == "中 文"


def test_unicode_forms():
    assert Unicode(form="NFC").apply("e\u0301") == "\u00e9"
    assert Unicode(form="NFC").apply("，ＡＢ") == "，ＡＢ"  # NFC keeps full-width forms
    assert Unicode(form="NFKC").apply("ＡＢ１") == "AB1"


def test_invisible_and_control_characters():
    text = "a\u200bb\ufeffc\x00d\x07e\tf\ng\x0ch\u200d\x1b[1;31mred\x1b[0m"
    assert Invisible().apply(text) == "abcde\tf\ng\nh\u200dred"
    assert Invisible(keep_zwj=False).apply("x\u200dy") == "xy"


def test_punctuation_policies():
    p = Punctuation(policy="cjk_fullwidth")
    assert p.apply("你好,世界!真的吗?是的:好;结束. Hello, world.") == "你好，世界！真的吗？是的：好；结束。 Hello, world."
    assert p.apply("参见(第二章)和 (see below)") == "参见（第二章）和 (see below)"
    assert Punctuation(policy="halfwidth").apply("ＡＢ，（１）　x") == "AB,(1) x"
    assert Punctuation(policy="keep").apply("ＡＢ１，") == "AB1，"
    code = "```\nprint(你好,世界)\n```"
    assert p.apply(code) == code  # code blocks are left alone


def test_traditional_to_simplified():
    assert TraditionalToSimplified().apply("漢字與繁體軟體") == "汉字与繁体软体"


def test_pii_masks_each_kind():
    text = ("联系 zhang.san@163.com 或 13812345678，座机 010-62345678，"
            "主页 https://example.com/a?b=1。服务器 8.8.4.4 与 2606:4700::1111。"
            "身份证 11010519491231002X，版本 1.2.3.4.5")
    out = PII().apply(text)
    assert "<EMAIL>" in out and "example.com/a" not in out and "<URL>" in out
    assert out.count("<PHONE>") == 2
    assert out.count("<IP>") == 2
    assert "<ID_CARD>" in out
    assert "1.2.3.4.5" in out  # not an IP address


def test_pii_leaves_technical_content_alone():
    text = ("127.0.0.1 localhost; 网关 192.168.0.1，掩码 255.255.255.0，组播 224.0.0.251；"
            "示例 foo@www.example.com 和 user@host.test；范围 -2147483648 到 +2147483647；正则 [0123456789]")
    assert PII().apply(text) == text
    assert PII(only_global_ips=False, keep_example_domains=False).apply(text).count("<IP>") == 4
    assert PII(kinds=["email"], masks={"email": "[邮箱]"}).apply("a@b.cn 13812345678") == "[邮箱] 13812345678"


def test_id_card_checksum():
    assert valid_id_card("11010519491231002X")
    assert not valid_id_card("110105194912310021")  # wrong check digit
    assert not valid_id_card("110105194913310029")  # month 13
    out = PII(kinds=["id_card"]).apply("号码 110105194912310021 不是身份证")
    assert "110105194912310021" in out


def test_length_filter():
    f = Length(min_chars=5, max_chars=10)
    assert f.judge("1234") and "too short" in f.judge("1234")
    assert f.judge("12 345") is None  # whitespace not counted
    assert "too long" in f.judge("x" * 11)
    assert Length(min_words=3).judge("中文字") is not None  # 2 words: 中文 + 字
    assert Length(min_words=3).judge("hello big world") is None


def test_char_ratio_filter():
    assert CharRatio(min_letter_ratio=0.5).judge("!!!!@@@@###abc") is not None
    assert CharRatio(max_digit_ratio=0.3).judge("12345678 ab") is not None
    assert CharRatio(min_cjk_ratio=0.5).judge("mostly english 中") is not None
    assert CharRatio(min_letter_ratio=0.5, max_digit_ratio=0.3, max_symbol_ratio=0.3).judge("正常的中文句子，有标点。") is None


def test_repetition_rules():
    rep = Repetition()
    lines = "\n".join(["同一行重复出现"] * 5 + ["不同的一行", "另一行内容"])
    assert "duplicate" in rep.judge(lines)
    assert "top 2-gram" in Repetition(max_dup_line_frac=1, max_dup_line_char_frac=1).judge("买买 买买 " * 30)
    normal = "Debian 是一个自由的操作系统。它由遍布全球的志愿者共同维护，提供数万个软件包。用户可以自由地使用、修改和分发。"
    assert rep.judge(normal) is None
    repeated_phrase = ("the quick brown fox jumps over the lazy dog and runs away " * 4) + "finally something else here"
    assert "duplicated" in Repetition(max_top_ngram_char_frac={}).judge(repeated_phrase)
    code = "说明。\n\n```\n}\n}\n}\n}\n```"
    assert rep.judge(code) is None  # repeated lines inside code are ignored


def test_bad_words(tmp_path):
    words = tmp_path / "bad.txt"
    words.write_text("赌博\nspam\n", encoding="utf-8")
    f = BadWords(files=[str(words)])
    assert "赌博" in f.judge("网上赌博网站")
    assert f.judge("This is SPAM.") is not None
    assert f.judge("spammer classes") is None  # ASCII words match whole words only
    assert BadWords(words=["坏"], max_hits=1).judge("坏") is None
    with pytest.raises(FileNotFoundError):
        BadWords(files=[str(tmp_path / "missing.txt")]).judge("x")


def test_sft_answer_filter():
    f = SFTAnswer(min_answer_chars=2)
    ok = {"messages": [{"role": "user", "content": "问题"}, {"role": "assistant", "content": "完整的回答"}]}
    assert f.judge_record(ok, "") is None
    short = {"messages": [{"role": "user", "content": "选哪个?"}, {"role": "assistant", "content": "B"}]}
    assert "too short" in f.judge_record(short, "")
    no_answer = {"messages": [{"role": "user", "content": "你好"}]}
    assert "assistant" in f.judge_record(no_answer, "")


def test_langid_restricted_languages():
    f = LangId(languages=["chinese", "english", "french"], keep=["chinese"])
    assert f.judge("这是一段中文文本，用来测试语言识别。") is None
    assert "english" in f.judge("This is an English sentence about operating systems.")
    with pytest.raises(ValueError):
        LangId(languages=["klingon"])


def test_changed_chars_counts_edits_not_whole_text():
    assert changed_chars("abc", "abc") == 0
    assert 3 <= changed_chars("A  B。\n\n\n\nC", "A B。\n\nC") <= 5  # 1 space + 2 newlines (bound: 5)
    assert changed_chars("x" * 1000 + "\n" + "y", "x" * 1000 + "\n" + "z") == 1
    long_text = "\n".join(f"line {i} of a long document" for i in range(2000))
    edited = long_text.replace("line 5 of", "line  5 of").replace("\nline 1500", "\n\n\nline 1500")
    assert changed_chars(edited, long_text) <= 4
    # a whole article on one line with two small edits far apart counts 2, not the 30,000 characters between
    article = "词" * 15_000 + "  " + "语" * 30_000 + "  " + "句" * 15_000
    assert changed_chars(article, article.replace("  ", " ")) == 2
    # every line changed and the line count changed too: still each edit, not whole blocks
    n = 20_000
    before = "\n\n\n".join(f"第{i}行  内容" for i in range(n))
    after = "\n\n".join(f"第{i}行 内容" for i in range(n))
    assert changed_chars(before, after) == n + (n - 1)  # one space per line, one newline per gap


def test_changed_chars_blank_lines_removed_is_the_alignment(monkeypatch):
    """When only blank lines went (the whitespace step), changed_chars skips the line alignment: the count must be
    the alignment's (forced here by turning the shortcut off), also where a run of blank lines grew, a blank
    line kept its spaces, or a line's content changed (the shortcut does not apply)."""
    from danlu.data.clean import base

    rng = random.Random(0)
    atoms = ["a", "b c", "", " ", "  ", "\t", "x  y", "\u3000", "}", "  }", "中文"]
    cases = []
    for _ in range(3000):
        lines = [rng.choice(atoms) for _ in range(rng.randint(0, 14))]
        kept = [ln for ln in lines if ln.strip() or rng.random() < 0.5]
        kept = [ln.rstrip() if rng.random() < 0.7 else ln for ln in kept]
        if rng.random() < 0.15:
            kept.insert(rng.randint(0, len(kept)), rng.choice(atoms))
        cases.append(("\n".join(lines), "\n".join(kept)))
    fast = [changed_chars(a, b) for a, b in cases]
    monkeypatch.setattr(base, "_blank_lines_removed", lambda *args: None)
    assert fast == [changed_chars(a, b) for a, b in cases]


def test_markdown_blocks_cover_text():
    bl = blocks(MARKDOWN)
    kinds = [b.kind for b in bl]
    assert kinds == ["heading", "paragraph", "list", "table", "code", "paragraph", "paragraph"]
    pos = 0
    for b in bl:  # between blocks only whitespace
        assert MARKDOWN[pos : b.start].strip() == ""
        pos = b.end
    assert MARKDOWN[pos:].strip() == ""


def test_code_spans_are_the_code_blocks_of_the_full_parse():
    """code_spans scans fence lines only; it must find exactly the code blocks `blocks` finds, for any mix of
    fence kinds, lengths, indentation, info strings and unclosed fences."""
    import random

    rng = random.Random(0)
    pieces = ["```", "~~~", "````", " ```py", "   ~~~~", "    ```", "text", "", "``` ", "```\t", "~~~x", "a```",
              "# title", "| a | b |", "- item"]
    for _ in range(5000):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert code_spans(text) == [(b.start, b.end) for b in blocks(text) if b.kind == "code"], repr(text)
    assert code_spans(MARKDOWN) == [(b.start, b.end) for b in blocks(MARKDOWN) if b.kind == "code"] != []


def test_pii_masks_are_literal_text():
    pii = PII(kinds=["url", "phone"], masks={"url": r"<U\1>", "phone": r"\g<0>"})
    assert pii.apply("见 https://example.org/a 或致电 13812345678") == r"见 <U\1> 或致电 \g<0>"


# --- calibrated filters (issue #11) ---------------------------------------------------------------------------

def test_top_ngram_share_is_at_most_one():
    """Overlapping occurrences are covered once: "买买 买买 ..." used to report 'covers 1.97 of chars'."""
    text = "买买 买买 " * 30
    assert Repetition().measure(text)["top_2gram"] == 1.0
    reason = Repetition(max_dup_line_frac=1, max_dup_line_char_frac=1).judge(text)
    assert reason == "top 2-gram covers 1.00 of chars > 0.3 (cjk)"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    assert Repetition().measure(" ".join(words))["top_2gram"] == 0.0  # nothing repeats: nothing covered
    half = " ".join(words) + " " + " ".join(["lambda mu"] * 5)
    share = Repetition().measure(half)["top_2gram"]
    assert abs(share - 5 * len("lambdamu") / sum(map(len, half.split()))) < 1e-9  # (lambda mu) x5: 40 of 87 chars


def test_layout_lines_and_table_rows_are_not_repeated_content():
    rows = "\n".join(f"| {i} | 参数{i} |\n+----------+----------+" for i in range(30))
    text = "下面的表格列出全部参数，每个参数都有说明。\n\n" + rows
    assert Repetition().judge(text) is None
    encoding = "\n".join(["1     CARD8                           major opcode",
                          "2     CARD16                          sequence number"] * 20)
    assert Repetition().judge("The reply is encoded as follows.\n\n" + encoding) is None
    assert Repetition(ignore_tables=False).judge("The reply.\n\n" + encoding) is not None


def test_ngram_thresholds_are_per_script():
    zh = "搬家公司" * 3 + "提供服务。" + "搬家公司价格实惠，" * 10
    en = " ".join(["cheap movers"] * 10 + ["for", "your", "home"])
    rules = dict(max_dup_line_frac=1, max_dup_line_char_frac=1, max_dup_ngram_char_frac={})
    strict_zh = Repetition(cjk_max_top_ngram_char_frac={2: 0.1}, max_top_ngram_char_frac={2: 0.99}, **rules)
    assert strict_zh.judge(zh).endswith("(cjk)") and strict_zh.judge(en) is None
    strict_en = Repetition(cjk_max_top_ngram_char_frac={2: 0.99}, max_top_ngram_char_frac={2: 0.1}, **rules)
    assert strict_en.judge(en).endswith("(latin)") and strict_en.judge(zh) is None


def test_keyword_stuffing_needs_dominant_words_and_no_grammar():
    import random

    from danlu.data.clean.planted import spam

    rep = load_clean_config(preset="pretrain").steps[[s.op for s in load_clean_config(preset="pretrain").steps].index("repetition")]
    rng = random.Random(3)
    for lang in ("zh", "en", "zh", "en"):
        assert "keyword stuffing" in rep.judge(spam(rng, lang)) or "top" in rep.judge(spam(rng, lang))
    prose = ("apt 是 Debian 的软件包管理工具。它从软件源下载软件包，并且在安装之前检查依赖关系。"
             "如果依赖关系不能满足，apt 会给出提示，用户可以选择其他版本或者取消安装。") * 4
    assert rep.judge(prose) is None


def test_mojibake_finds_the_usual_misdecodings():
    from danlu.data.clean.mojibake import Mojibake

    zh = "Debian 是一个自由的操作系统，由遍布全球的志愿者共同开发和维护。它提供了数万个软件包，覆盖服务器、桌面和嵌入式设备。"
    m = Mojibake()
    assert m.judge(zh) is None
    assert m.judge("Café, déjà vu, naïve façade — “quotes” … Zürich, Ærø, São Paulo, Kraków.") is None
    assert m.judge("日本語のテキストも、誤って判定されてはいけません。ひらがなとカタカナ。") is None
    assert "GBK" in m.judge(zh.encode("utf-8").decode("gbk", errors="replace"))
    assert "cp1252" in m.judge(zh.encode("utf-8").decode("cp1252", errors="replace"))
    # Latin-1 turns UTF-8 continuation bytes 0x80-0x9F into C1 controls, which `invisible` removes first
    latin1 = Invisible().apply(zh.encode("utf-8").decode("latin-1"))
    assert "Latin-1" in m.judge(latin1)
    assert "replacement characters" in m.judge(zh[:20] + "\ufffd" * 3 + zh[20:])
    assert "replacement characters" in m.judge(zh + "锟斤拷锟斤拷")


def test_boilerplate_and_navigation():
    import random

    from danlu.data.clean.boilerplate import CHROME_PHRASES, Boilerplate, _CHROME
    from danlu.data.clean.planted import boilerplate, navigation

    for phrase, example in CHROME_PHRASES:  # the look-ahead on first characters must not hide a phrase
        assert _CHROME.search(example.lower()), phrase
    for alt in ("log in / sign up", "previous article: x", "download our app", "reddit | x", "facebook |",
                "linkedin |", "like (3)", "首页 ｜ 联系我们"):
        assert _CHROME.search(alt), alt
    b = Boilerplate()
    rng = random.Random(5)
    for lang in ("zh", "en"):
        assert "boilerplate lines" in b.judge(boilerplate(rng, lang))
        assert "navigation links" in b.judge(navigation(rng, lang))
    login = ("## 描述\n\n**login** 用于登录系统。用户输入用户名和口令后，login 启动用户的登录 shell。\n\n"
             "新用户需要先注册帐号，管理员用 useradd 命令注册。Log in as root to register new users.\n\n"
             "## 参见\n\n**passwd**(1), **nologin**(8), **useradd**(8)")
    options = "\n".join(f"- **-{c}**, **--opt-{c}**\n\n  选项 {c} 的说明。" for c in "abcdefgh")
    toc = "\n".join(f"    {i}.{j}. 第 {j} 节" for i in range(1, 6) for j in range(1, 6))
    table = "\n".join(f"| `Ctrl-{c}` | 删除一个字符 |" for c in "ABCDEFGHIJ")
    for text in (login, options, toc, table):
        assert b.judge(text) is None, text[:40]


def test_char_ratio_leaves_formatting_out():
    f = CharRatio(min_letter_ratio=0.3, max_digit_ratio=0.5)
    toc = "\n".join(f"4.{i}  Compressed pages ....................................   {i + 14}" for i in range(12))
    assert f.judge(toc) is None
    bits = "说明如下。\n\n```\n" + "\n".join(f"vec($_, {i}, 1) = 1 == {2 ** i:10d} {'0' * i}1" for i in range(20)) + "\n```"
    assert f.judge(bits) is None
    assert f.judge("```\n0101 0101\n```") is None  # only code: nothing to judge
    assert f.judge("#$%^&*()!@#$%^&*()_+{}|:<>?~ 12 34 56 78 90") is not None


def test_langid_skips_code_and_too_little_text():
    f = LangId(languages=["chinese", "english", "french"], keep=["chinese", "english"])
    assert f.judge("```\nif [ -f /etc/os-release ]; then . /etc/os-release; fi\n```") is None
    assert f.judge("$ ls -la") is None  # fewer letters than min_letters
    assert "french" in f.judge("Ceci est un texte français sur le système Debian et ses paquets logiciels.")
    assert f.judge("   ") == "no text to identify"
