"""Boilerplate and navigation: page chrome that survived HTML conversion (or came from a site dump as text).

Two measures over the non-empty lines of a text, each a share of its non-space characters:

- boilerplate: lines made of site chrome phrases (cookie and privacy notices, log-in bars, share buttons,
  "related posts", copyright/ICP footers), in Chinese and English. Technical documents have a copyright line
  or two; a chrome-only page or a chrome block is mostly such lines.
- navigation: link-like lines - menus and breadcrumbs (short items between |, ·, », >), pagination, and list
  items that are a short title with no sentence punctuation - in a text with hardly any sentences. Option
  lists, SEE ALSO lists and tables of contents in reference pages are not link-like: they carry option dashes,
  parentheses, paths, numbers or sentences.

Both are judged per section (see sections.py), so a chrome block inside a long document goes and the document
stays.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from danlu.data.clean.base import Filter
from danlu.data.clean.markdown import without_code
from danlu.data.clean.textstats import has_alnum

# Site chrome phrases (matched on the lower-cased line), each with an example it must match (tested). They are
# phrases of page furniture, not topic words: a man page about login(1) says "log in" and "register", and
# useradd(8)'s Chinese page says 登录 and 注册.
CHROME_PHRASES = [
    (r"we use cookies", "We use cookies to improve your experience"),
    (r"cookie (policy|settings|preferences)", "Read our Cookie Policy"),
    (r"accept (all )?cookies", "[Accept all cookies]"),
    (r"privacy policy", "Privacy Policy | Terms"),
    (r"terms (of (use|service)|and conditions)", "Terms of Use"),
    (r"all rights reserved", "© 2024 Example. All rights reserved."),
    (r"(sign|log) ?in\s*[|/]\s*(register|sign ?up)", "Sign in | Register"),
    (r"forgot (your )?password\?", "Forgot password?"),
    (r"subscribe to (our|the) newsletter", "Subscribe to our newsletter"),
    (r"\bnewsletter\b.*\[", "Weekly newsletter [Subscribe]"),
    (r"\bshare (this|on)\b", "Share this article: Facebook"),
    (r"follow us (on|at)", "Follow us on Twitter"),
    (r"related (posts|articles|stories)", "## Related posts"),
    (r"most (popular|read)\b", "## Most popular"),
    (r"read more\s*[»>]", "Read more »"),
    (r"skip to (main )?content", "Skip to main content"),
    (r"back to top", "Back to top"),
    (r"(previous|next) (post|article)\s*:", "Next post: Tuning Tomcat"),
    (r"powered by \w+", "Powered by WordPress"),
    (r"advertise with us", "Advertise with us"),
    (r"(download|get) (the|our) app", "Get the app"),
    (r"(facebook|twitter|linkedin|reddit)\s*\|", "Twitter | LinkedIn"),
    (r"\|\s*(contact us|about us|sitemap|careers)\b", "Home | Contact us"),
    (r"\b(contact us|about us)\s*\|", "About us | Blog"),
    (r"\b(comments?|like) \(\d+\)", "Comments (12)"),
    ("保留所有权利", "版权所有 保留所有权利"),
    ("版权所有 ?©.*(网|站|公司)", "版权所有 © 2008-2024 码农之家网"),
    ("icp备", "京ICP备12345678号"),
    ("公网安备", "京公网安备 11010802000001号"),
    ("隐私政策", "详情请阅读《隐私政策》"),
    ("用户协议", "用户协议 | 隐私"),
    ("[|｜]\\s*(联系我们|关于我们|网站地图)", "首页 | 联系我们"),
    ("(联系我们|关于我们|网站地图)\\s*[|｜]", "关于我们 | 广告合作"),
    ("友情链接", "友情链接："), ("广告合作", "广告合作"), ("免费注册", "免费注册"), ("忘记密码", "忘记密码"),
    ("登录\\s*[|｜/]\\s*注册", "登录 | 注册"), ("分享到", "分享到： 微信"), ("扫一扫", "扫一扫，关注"),
    ("关注我们", "关注我们"), ("微信公众号", "微信公众号"), ("返回顶部", "返回顶部"), ("上一篇[:：]", "上一篇：安装"),
    ("下一篇[:：]", "下一篇：配置"), ("相关文章", "## 相关文章"), ("相关阅读", "相关阅读"), ("热门推荐", "热门推荐"),
    ("猜你喜欢", "猜你喜欢"), ("阅读全文", "阅读全文"), ("查看更多", "查看更多"), ("点击(这里|此处)", "点击此处下载"),
    ("订阅我们", "订阅我们的周刊"), ("转载请注明", "转载请注明出处"), ("如有侵权", "如有侵权请联系删除"),
    ("点赞 ?[(（]", "点赞 (12)"), ("举报", "收藏 | 举报"), ("扫码", "扫码下载"), ("客服热线", "客服热线：400"),
    ("下载 ?app", "下载 App"),
]
# First characters the phrases can start with: a look-ahead on them lets the regex skip most positions at once
# (5x faster on Chinese text); tests/test_clean_ops.py checks every phrase's example still matches.
_CHROME_FIRST = "wcaptsflrmbdgn|｜保版i公隐用联关网友广免忘登分扫微返上下相热猜阅查点订转如举客"
_CHROME = re.compile(f"(?=[{re.escape(_CHROME_FIRST)}])(?:{'|'.join(p for p, _ in CHROME_PHRASES)})")
_SEPARATORS = re.compile(r"\s+(?:\||·|•|»|›|>)\s+")  # not runs of spaces: those are the columns of text tables
_PAGINATION = re.compile(r"^(?:上一页|«\s*prev\w*|previous|首页)?[\s\d.…|]+(?:下一页|next\s*»?|尾页|last\s*»?|\s)*$", re.I)
_LIST_MARK = re.compile(r"^(?:[-*+]|\d{1,3}[.)])\s+")
_MARKUP = re.compile(r"[*`#\[\]]")
_SENTENCE_END = re.compile(r"[。！？；.!?;:：…]['\"”’」』)）]*$")
# the same on a line with its markup still in: markup characters may sit anywhere after the sentence end
_SENTENCE_END_MARKED = re.compile(r"[。！？；.!?;:：…][*`#\[\]'\"”’」』)）]*$")
# options, code, calls, paths, identifiers (CamelCase: AddKeysToAgent in ssh_config's option list), numbers
_NOT_LINK = re.compile(r"(^|\s)--?\w|[=(){}<\\$@~%_]|\w[./:]\w|[a-z][A-Z]|\d{3,}")
MAX_CHROME_LINE = 300  # a longer line is content (a cookie notice is ~150 characters)
_WIDE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


def _is_link_item(item: str) -> bool:
    """A menu entry or link title: a few words, no sentence end, nothing that looks like code or data."""
    if not item or _SENTENCE_END.search(item) or _NOT_LINK.search(item):
        return False
    return len(_WIDE.findall(item)) <= 16 and len(item.split()) <= 6


def link_like(line: str) -> bool:
    """A line of navigation: menu, breadcrumb, pagination or a list item that is only a link title."""
    if line.startswith("|"):  # a table row: tables are data, not menus
        return False
    text = _MARKUP.sub("", _LIST_MARK.sub("", line)).strip()
    if not text:
        return False
    if _PAGINATION.match(text) and any(c.isdigit() for c in text):
        return True
    items = [p for p in _SEPARATORS.split(text) if p.strip()]
    if len(items) > 1 and all(_is_link_item(p.strip()) or p.strip().isdigit() for p in items):
        return True  # "首页 | 新闻 | 产品", "Home > Docs > Install", "上一页 1 2 3 下一页"
    return len(items) == 1 and _LIST_MARK.match(line.strip()) is not None and _is_link_item(text)


def _lines(text: str) -> list[str]:
    """The stripped lines of prose with a letter or digit (layout lines are not content: textstats.has_alnum)."""
    return list(filter(has_alnum, map(str.strip, without_code(text).split("\n"))))


def _chars(line: str) -> int:
    return len(line) - line.count(" ")


class Boilerplate(Filter):
    """Reject text that is mostly site chrome (`max_chrome_share`) or mostly navigation links
    (`max_navigation_share`, when fewer than `min_sentence_share` of its lines are sentences)."""

    op: Literal["boilerplate"] = "boilerplate"
    max_chrome_share: float = Field(0.4, ge=0, le=1)
    max_navigation_share: float = Field(0.6, ge=0, le=1)
    min_sentence_share: float = Field(0.2, ge=0, le=1)  # more sentences than this: not a navigation page

    def measure(self, text: str) -> dict[str, float]:
        lines, short, total = _measured_lines(text)
        return {"chrome": _chrome_chars(short) / total, "navigation": _navigation_chars(short) / total,
                "sentences": _sentence_share(lines)}

    def judge(self, text: str) -> str | None:
        # measure()'s figures, each computed only when the verdict still depends on it: most text has sentences,
        # so the navigation rule (a regex walk of every line) rarely needs measuring
        lines, short, total = _measured_lines(text)
        chrome = _chrome_chars(short) / total
        if chrome > self.max_chrome_share:
            return f"boilerplate lines {chrome:.2f} of chars > {self.max_chrome_share}"
        sentences = _sentence_share(lines)
        if sentences >= self.min_sentence_share:
            return None
        navigation = _navigation_chars(short) / total
        if navigation > self.max_navigation_share:
            return (f"navigation links {navigation:.2f} of chars > {self.max_navigation_share} "
                    f"(sentences {sentences:.2f})")
        return None


def _measured_lines(text: str) -> tuple[list[str], list[str], int]:
    """(the lines judged, the short ones among them - chrome and menus are short lines -, their characters)."""
    lines = _lines(text)
    return lines, [ln for ln in lines if len(ln) <= MAX_CHROME_LINE], sum(map(_chars, lines)) or 1


def _chrome_chars(short: list[str]) -> int:
    # one search over all lines first: a phrase found in a line is found in the lines joined, and most text has none
    if not short or not _CHROME.search("\n".join(short).lower()):
        return 0
    return sum(_chars(ln) for ln in short if _CHROME.search(ln.lower()))


def _navigation_chars(short: list[str]) -> int:
    return sum(_chars(ln) for ln in short if link_like(ln))


def _sentence_share(lines: list[str]) -> float:
    """Share of lines that end a sentence once their markup is removed (one regex search a line, in C)."""
    return len(list(filter(None, map(_SENTENCE_END_MARKED.search, lines)))) / max(len(lines), 1)
