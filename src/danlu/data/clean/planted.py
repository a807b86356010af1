"""Planted defects: known-bad text mixed into clean documents, to measure each quality filter's precision and
recall (benchmarks/bench_filters.py, tests/test_clean_planted.py).

Five kinds, in Chinese and English, each as a web-page-sized record of its own and as a section inserted into
a long clean document (where section-level filtering should remove it and nothing else):

- boilerplate   page chrome: cookie notices, log-in bars, share buttons, related-article lists, footers
- spam          SEO keyword stuffing around a product and a list of cities
- repeated      the same few lines over and over (a log flood, a broken template loop)
- mojibake      real passages of the clean corpus, UTF-8 misread as GBK, cp1252 or Latin-1
- navigation    menus, breadcrumbs, pagination, category and site-map link lists

The text is generated from templates with a seeded RNG, so a run is reproducible. Planted text is passed
through `normalize` (the clean config's transforms) before it is planted, so that what the filters see is the
planted text itself and the truth can be kept as lines.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from danlu.records import document

KINDS = ("boilerplate", "spam", "repeated", "mojibake", "navigation")

_SITES_ZH = ["云栖社区", "码农之家", "运维派", "技术博客园", "开源中国站", "极客学院", "IT168", "网管之家", "编程宝典", "站长之家"]
_SITES_EN = ["TechDaily", "DevHub", "CodeCorner", "SysAdmin Weekly", "OpenStack Forum", "LinuxPlanet", "ByteBlog",
             "CloudNotes", "The Ops Digest", "StackPedia"]
_TOPICS_ZH = ["Nginx 反向代理配置详解", "MySQL 主从复制实战", "Docker 镜像瘦身技巧", "Kubernetes 入门教程", "Linux 磁盘扩容",
              "Redis 持久化原理", "Git 分支管理规范", "Shell 脚本常用技巧", "Python 爬虫入门", "Zabbix 监控部署",
              "Ansible 批量运维", "Tomcat 性能调优", "SSH 免密登录设置", "防火墙 iptables 规则", "ELK 日志平台搭建"]
_TOPICS_EN = ["Configuring Nginx as a reverse proxy", "MySQL replication in practice", "Slimming Docker images",
              "Kubernetes for beginners", "Growing a Linux filesystem", "How Redis persistence works",
              "A Git branching model", "Shell scripting tips", "Web scraping with Python", "Deploying Zabbix",
              "Fleet automation with Ansible", "Tuning Tomcat", "Passwordless SSH", "iptables firewall rules",
              "Building an ELK log stack"]


def _pick(rng: random.Random, items: list[str], k: int) -> list[str]:
    return rng.sample(items, min(k, len(items)))


def boilerplate(rng: random.Random, lang: str) -> str:
    if lang == "zh":
        site = rng.choice(_SITES_ZH)
        parts = [
            f"欢迎来到{site}！ 请 登录 | 免费注册 | 忘记密码",
            rng.choice(["本网站使用 Cookie 来改善您的浏览体验。继续浏览即表示您同意我们使用 Cookie。 [接受] [了解更多]",
                        "我们使用 cookies 以提供更好的服务，详情请阅读《隐私政策》。 同意并继续"]),
            "分享到： 微信 | 微博 | QQ空间 | 复制链接",
            rng.choice(["扫一扫，关注我们的微信公众号", "关注我们：微信公众号 / 官方微博 / 抖音号"]),
            "## 相关文章\n\n" + "\n".join(f"- {t}" for t in _pick(rng, _TOPICS_ZH, rng.randint(4, 7))),
            "## 热门推荐\n\n" + "\n".join(f"- {t}（阅读 {rng.randint(1000, 99999)}）" for t in _pick(rng, _TOPICS_ZH, 4)),
            rng.choice(["订阅我们的邮件周刊，第一时间获取最新技术资讯。 [立即订阅]", "下载 App，随时随地阅读。 [扫码下载]"]),
            "点赞 (%d) | 收藏 | 评论 (%d) | 举报" % (rng.randint(1, 500), rng.randint(0, 90)),
            "上一篇：%s\n下一篇：%s" % tuple(_pick(rng, _TOPICS_ZH, 2)),
            f"关于我们 | 联系我们 | 广告合作 | 网站地图 | 友情链接 | 免责声明\n"
            f"版权所有 © 2008-{rng.randint(2019, 2025)} {site} 保留所有权利\n"
            f"京ICP备{rng.randint(10000000, 99999999)}号-{rng.randint(1, 9)}  京公网安备 {rng.randint(10**13, 10**14 - 1)}号\n"
            "本站部分内容来自网络，如有侵权请联系删除。转载请注明出处。",
        ]
    else:
        site = rng.choice(_SITES_EN)
        parts = [
            f"Welcome to {site}! Sign in | Register | Forgot password?",
            rng.choice(["We use cookies to improve your experience on our site. By continuing to browse you agree "
                        "to our use of cookies. [Accept all] [Manage preferences]",
                        "This website uses cookies. Read our Cookie Policy and Privacy Policy. [Got it]"]),
            "Share this article: Facebook | Twitter | LinkedIn | Reddit | Email",
            rng.choice(["Follow us on Twitter, Facebook and YouTube", "Join our community on Discord and GitHub"]),
            "## Related posts\n\n" + "\n".join(f"- {t}" for t in _pick(rng, _TOPICS_EN, rng.randint(4, 7))),
            "## Most popular\n\n" + "\n".join(f"- {t} ({rng.randint(1000, 99999)} views)" for t in _pick(rng, _TOPICS_EN, 4)),
            rng.choice(["Subscribe to our newsletter and never miss an update. [Subscribe]",
                        "Get the app for the best reading experience. [Download now]"]),
            "Like (%d) | Save | Comments (%d) | Report" % (rng.randint(1, 500), rng.randint(0, 90)),
            "Previous post: %s\nNext post: %s" % tuple(_pick(rng, _TOPICS_EN, 2)),
            f"About us | Contact us | Advertise | Sitemap | Careers | Terms of Use | Privacy Policy\n"
            f"Copyright © 2008-{rng.randint(2019, 2025)} {site}. All rights reserved.\n"
            "Powered by WordPress. Theme by ThemeForest.",
        ]
    rng.shuffle(parts[1:-1])
    return "\n\n".join(parts[: rng.randint(6, len(parts) - 1)] + parts[-1:])


_SPAM_ZH = [("搬家公司", ["搬家", "搬家公司电话", "搬家公司哪家好", "搬家公司价格", "长途搬家", "居民搬家", "公司搬迁"]),
            ("网站优化", ["SEO优化", "网站排名", "关键词排名", "百度快照", "整站优化", "网站推广"]),
            ("贷款", ["小额贷款", "无抵押贷款", "快速放款", "网上贷款", "低息贷款", "信用贷款"]),
            ("减肥", ["减肥药", "快速减肥", "减肥方法", "瘦身", "减肥茶", "月瘦十斤"])]
_SPAM_EN = [("moving company", ["movers", "cheap movers", "best moving company", "local movers", "moving services"]),
            ("SEO services", ["SEO agency", "cheap SEO", "rank first on Google", "backlinks", "SEO expert"]),
            ("payday loans", ["fast loans", "cash loans", "no credit check loans", "instant approval", "online loans"]),
            ("weight loss", ["diet pills", "lose weight fast", "fat burner", "weight loss pills", "slim fast"])]
_CITIES_ZH = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "南京", "重庆", "西安", "天津", "苏州"]
_CITIES_EN = ["New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Dallas", "Austin", "Denver", "Seattle",
              "Boston", "Miami", "Atlanta"]


def spam(rng: random.Random, lang: str) -> str:
    zh = lang == "zh"
    head, words = rng.choice(_SPAM_ZH if zh else _SPAM_EN)
    cities = _pick(rng, _CITIES_ZH if zh else _CITIES_EN, rng.randint(4, 8))
    sep = "，" if zh else ", "
    lines = [f"# {cities[0]}{head}" if zh else f"# {head} {cities[0]}"]
    for _ in range(rng.randint(8, 16)):
        phrase = []
        for _ in range(rng.randint(5, 10)):  # mostly the page's own city, as stuffed pages target one market
            c = cities[0] if rng.random() < 0.6 else rng.choice(cities)
            w = rng.choice(words + [head, head])
            phrase.append(f"{c}{w}" if zh else f"{w} {c}")
        if rng.random() < 0.4:
            phrase.append(rng.choice(["专业可靠，价格实惠，欢迎来电咨询" if zh else "call now for a free quote",
                                      "24小时服务" if zh else "best price guaranteed"]))
        lines.append(sep.join(phrase) + ("。" if zh else "."))
    lines.append(("热门搜索：" if zh else "Tags: ") + sep.join(f"{c}{head}" if zh else f"{head} {c}" for c in cities))
    return "\n\n".join(lines)


def repeated(rng: random.Random, lang: str) -> str:
    zh = lang == "zh"
    pools = ([["[错误] 数据库连接失败，正在重试……", "[警告] 请求超时，请稍后再试"],
              ["点击此处下载附件（%s.zip）" % rng.choice(["资料", "源码", "课件"])],
              ["暂无数据", "加载中，请稍候……"], ["该内容已被删除或不存在。", "请输入验证码后继续。"]]
             if zh else
             [["ERROR: connection to database failed, retrying...", "WARN: request timed out"],
              ["Click here to download the attachment (%s.zip)" % rng.choice(["slides", "source", "notes"])],
              ["No data available", "Loading, please wait..."], ["This content has been removed.", "Enter the captcha to continue."]])
    lines_pool = rng.choice(pools)
    n = rng.randint(30, 80)
    out = [rng.choice(lines_pool) for _ in range(n)]
    for _ in range(rng.randint(1, 3)):  # a few unique lines in between, as in a real log or template loop
        out.insert(rng.randrange(len(out)), (f"第 {rng.randint(1, 999)} 页" if zh else f"page {rng.randint(1, 999)}"))
    return ("\n\n" if rng.random() < 0.5 else "\n").join(out)  # one <p> per line, or a <pre> dump


def mojibake(rng: random.Random, passage: str) -> str:
    codec = rng.choice(["gbk", "gbk", "cp1252", "latin-1"])
    return passage.encode("utf-8").decode(codec, errors="replace")


# A planted section is a section of its own: it starts with a heading, as a garbled chapter or a chrome block
# converted from a page does. (A defect inside a section of good text is not separable at section level.)
_SECTION_TITLES = {
    "boilerplate": ("## 相关信息", "## More from us"), "spam": ("## 推荐服务", "## Our services"),
    "repeated": ("## 运行日志", "## Output"), "mojibake": ("## 附录", "## Appendix"),
    "navigation": ("## 网站导航", "## Navigation"),
}


_NAV_ZH = ["首页", "新闻动态", "产品中心", "解决方案", "客户案例", "技术支持", "下载中心", "服务与支持", "合作伙伴", "人才招聘",
           "关于我们", "联系我们", "在线留言", "常见问题", "公司简介", "企业文化", "发展历程", "荣誉资质", "售后服务", "行业资讯"]
_NAV_EN = ["Home", "News", "Products", "Solutions", "Customers", "Support", "Downloads", "Services", "Partners",
           "Careers", "About", "Contact", "Blog", "FAQ", "Company", "Events", "Pricing", "Documentation", "Community",
           "Press"]


def navigation(rng: random.Random, lang: str) -> str:
    zh = lang == "zh"
    items = _NAV_ZH if zh else _NAV_EN
    topics = _TOPICS_ZH if zh else _TOPICS_EN
    parts = [
        " | ".join(_pick(rng, items, rng.randint(6, 10))),
        (" > " if rng.random() < 0.5 else " » ").join(["首页" if zh else "Home"] + _pick(rng, items, 2) + [rng.choice(topics)]),
        "\n".join(f"- {x}" for x in _pick(rng, items, rng.randint(6, 12))),
        ("上一页 " if zh else "« Prev ") + " ".join(str(i) for i in range(1, rng.randint(6, 11))) + (" 下一页 尾页" if zh else " Next » Last"),
        "\n".join(f"- {x}" for x in _pick(rng, topics, rng.randint(5, 9))),
        " · ".join(_pick(rng, items, rng.randint(5, 8))),
        ("## 网站导航\n\n" if zh else "## Site map\n\n") + "\n".join(
            f"- {a}\n  - {b}\n  - {c}" for a, b, c in (_pick(rng, items, 3) for _ in range(rng.randint(3, 5)))),
    ]
    rng.shuffle(parts)
    return "\n\n".join(parts[: rng.randint(4, len(parts))])


@dataclass
class Planted:
    """What was planted where: record id -> [(kind, text)] (a planted page is one item covering its text)."""

    records: list[dict]
    items: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def _passage(rng: random.Random, texts: list[str], chars: int) -> str:
    """A passage of whole lines, at least 30% non-ASCII: misdecoding leaves ASCII as it was, so an English
    passage would come out nearly intact (not a defect to find) - as in the real accident, which garbles
    Chinese text."""
    for _ in range(100):
        text = rng.choice(texts)
        start = rng.randrange(max(len(text) - chars, 1))
        start = text.rfind("\n", 0, start) + 1
        passage = text[start : start + chars].strip()
        if sum(1 for c in passage if ord(c) > 127) >= 0.3 * max(len(passage), 1):
            return passage
    return passage


def defect(kind: str, rng: random.Random, lang: str, clean_texts: list[str]) -> str:
    if kind == "mojibake":
        return mojibake(rng, _passage(rng, clean_texts, rng.randint(800, 2500)))
    return {"boilerplate": boilerplate, "spam": spam, "repeated": repeated, "navigation": navigation}[kind](rng, lang)


def plant(docs: list[dict], *, pages_per_kind: int = 20, sections_per_kind: int = 10, long_doc_chars: int = 20_000,
          seed: int = 0, normalize: Callable[[str], str] = lambda t: t) -> Planted:
    """`docs` (clean document records) plus planted pages, with planted sections inserted into long documents.
    Pages alternate Chinese and English; a section goes into a long document, between two of its blocks."""
    from danlu.data.clean.markdown import blocks

    rng = random.Random(seed)
    # passages for mojibake come from documents that are mostly non-ASCII (see _passage)
    texts = [d["text"] for d in docs if len(d["text"]) >= 800
             and sum(1 for c in d["text"][:5000] if ord(c) > 127) >= 0.3 * min(len(d["text"]), 5000)]
    texts = texts or [d["text"] for d in docs]
    out = Planted([dict(d) for d in docs])
    for kind in KINDS:
        for i in range(pages_per_kind):
            text = normalize(defect(kind, rng, "zh" if i % 2 == 0 else "en", texts))
            rec = document(text, "planted", f"planted/{kind}-{i}.md", "markdown", i)
            out.records.append(rec)
            out.items[rec["id"]] = [(kind, text)]
    long_docs = [i for i, d in enumerate(out.records[: len(docs)]) if len(d["text"]) >= long_doc_chars]
    targets = rng.sample(long_docs, min(len(long_docs), sections_per_kind * len(KINDS))) if long_docs else []
    for n, idx in enumerate(targets):
        kind = KINDS[n % len(KINDS)]
        rec = out.records[idx]
        text = rec["text"]
        zh = sum(1 for c in text[:2000] if "\u4e00" <= c <= "\u9fff") > 200
        body = defect(kind, rng, "zh" if zh else "en", texts)
        title = _SECTION_TITLES[kind][0 if zh else 1]
        if kind == "mojibake":
            title = title.encode("utf-8").decode("gbk", errors="replace") if zh else title
        section = normalize(f"{title}\n\n{body}")
        bl = [b for b in blocks(text) if b.start > 0]  # a defect section starts where a section starts
        starts = [b.start for b in bl if b.kind == "heading"] or [b.start for b in bl]
        at = rng.choice(starts) if starts else len(text)
        rec["text"] = text[:at] + section + "\n\n" + text[at:]
        out.items[rec["id"]] = [(kind, section)]
    return out


TARGETS = {"boilerplate": ("boilerplate", "navigation"), "repetition": ("spam", "repeated"), "mojibake": ("mojibake",)}


def _line_chars(text: str) -> Counter:
    """Characters per distinct stripped line (how removed text is matched to what was planted)."""
    c: Counter = Counter()
    for ln in text.split("\n"):
        ln = ln.strip()
        if ln:
            c[ln] += len(ln)
    return c


def score(planted: Planted, rejects: Path | str) -> dict:
    """Precision and recall of each operator on `planted`, from a clean run's rejects.jsonl.

    Text is matched by lines: a removed line counts as planted when it is a line of a defect planted in that
    record (and not also a line of the record's clean text), else as clean. Characters are non-blank line
    characters. Per operator: chars removed, planted chars among them (precision = planted / removed), and
    per kind the share of that kind's planted characters it removed (recall). Per kind: items caught (half or
    more of their characters removed by any operator) and the character recall of all operators together."""
    truth: dict[str, tuple[dict[str, tuple[str, int]], set[str]]] = {}
    kind_total: Counter = Counter()
    clean_total = 0
    for rec in planted.records:
        lines: dict[str, tuple[str, int]] = {}
        clean_text = rec["text"]
        for n, (kind, text) in enumerate(planted.items.get(rec["id"], [])):
            for ln in _line_chars(text):
                lines.setdefault(ln, (kind, n))
            clean_text = clean_text.replace(text, "", 1)
        clean_lines = set(_line_chars(clean_text))
        truth[rec["id"]] = ({k: v for k, v in lines.items() if k not in clean_lines}, clean_lines)
        for kind, text in planted.items.get(rec["id"], []):
            kind_total[kind] += sum(c for ln, c in _line_chars(text).items() if ln not in clean_lines)
        clean_total += sum(_line_chars(clean_text).values())
    by_op: dict[str, dict] = {}
    item_removed: Counter = Counter()  # (record id, item index) -> planted chars removed
    with open(rejects, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            rid, op = r.get("id"), r.get("op")
            if rid not in truth:
                continue
            text = r["text"] if "span" in r else r["record"]["text"]
            lines, _ = truth[rid]
            o = by_op.setdefault(op, {"removed": 0, "planted": 0, "clean": 0, "by_kind": Counter()})
            for ln, c in _line_chars(text).items():
                o["removed"] += c
                if ln in lines:
                    kind, n = lines[ln]
                    o["planted"] += c
                    o["by_kind"][kind] += c
                    item_removed[(rid, n)] += c
                else:
                    o["clean"] += c
    items = {k: [0, 0] for k in KINDS}  # kind -> [caught, planted]
    for rid, its in planted.items.items():
        lines, clean_lines = truth[rid]
        for n, (kind, text) in enumerate(its):
            size = sum(c for ln, c in _line_chars(text).items() if ln not in clean_lines)
            items[kind][1] += 1
            items[kind][0] += item_removed[(rid, n)] >= 0.5 * max(size, 1)
    ops = {op: {"removed_chars": o["removed"], "planted_chars": o["planted"], "clean_chars": o["clean"],
                "precision": o["planted"] / o["removed"] if o["removed"] else None,
                "recall": {k: o["by_kind"][k] / kind_total[k] for k in KINDS if kind_total[k]},
                "target_recall": (sum(o["by_kind"][k] for k in TARGETS[op]) / sum(kind_total[k] for k in TARGETS[op])
                                  if op in TARGETS and sum(kind_total[k] for k in TARGETS[op]) else None)}
           for op, o in by_op.items()}
    removed_kind = Counter()
    for o in by_op.values():
        removed_kind.update(o["by_kind"])
    clean_removed = sum(o["clean"] for o in by_op.values())
    return {"operators": ops, "clean_chars": clean_total, "clean_removed": clean_removed,
            "clean_removed_share": clean_removed / max(clean_total, 1),
            "kinds": {k: {"planted_chars": kind_total[k], "recall": removed_kind[k] / kind_total[k] if kind_total[k] else None,
                          "items_caught": items[k][0], "items": items[k][1]} for k in KINDS}}
