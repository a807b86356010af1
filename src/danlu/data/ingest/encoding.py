"""Bytes -> text: BOMs first, then strict UTF-8 (pure ASCII is UTF-8), then UTF-16 without a BOM, then
charset-normalizer over the encodings real Chinese/English documents come in."""

from __future__ import annotations

import codecs

from danlu.data.ingest.errors import IngestFailure

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# What charset-normalizer may choose from. Limiting the candidates keeps it from "finding" exotic code pages
# in short Chinese texts; gb18030 is the superset of gb2312/gbk, so it decodes both.
CANDIDATES = ["gb18030", "big5", "utf_16_le", "utf_16_be", "shift_jis", "euc_kr", "cp1252", "latin_1"]
_ALLOWED_CONTROLS = set("\t\n\r\f\v\x1b")


def _plausible(text: str) -> float:
    """Share of characters that real text is made of (printable ASCII, whitespace, CJK, full-width forms)."""
    sample = text[:4000]
    good = sum(
        1 for c in sample if " " <= c <= "~" or c in "\t\n\r" or "\u3000" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef"
    )
    return good / max(1, len(sample))


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 without a BOM: NUL bytes (never found in 8-bit text) and a clean decode as LE or BE."""
    if len(data) % 2 or b"\x00" not in data[:4096]:
        return None
    best, best_score = None, 0.0
    for enc in ("utf-16-le", "utf-16-be"):
        try:
            score = _plausible(data[:8192].decode(enc, errors="strict"))
        except UnicodeDecodeError:
            continue
        if score > best_score:
            best, best_score = enc, score
    return best if best_score > 0.9 else None


def _control_ratio(text: str) -> float:
    sample = text[:20000]
    if not sample:
        return 0.0
    bad = sum(1 for c in sample if (c < " " and c not in _ALLOWED_CONTROLS) or "\x7f" <= c <= "\x9f")
    return bad / len(sample)


def has_bom(data: bytes) -> bool:
    return any(data.startswith(bom) for bom, _ in _BOMS)


def decode(data: bytes, hint: str | None = None) -> tuple[str, str]:
    """(text, encoding name) for `data`; raises IngestFailure for empty, binary or undecodable input."""
    if not data:
        raise IngestFailure("empty file (0 bytes)")
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(enc), enc)
            except UnicodeDecodeError as e:
                raise IngestFailure(f"has a {enc} byte-order mark but is not valid {enc} at byte {e.start}") from None
    try:
        return _checked(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    utf16 = _utf16_without_bom(data)
    if utf16:
        try:
            return _checked(data.decode(utf16), utf16)
        except UnicodeDecodeError:
            pass
    if b"\x00" in data[:65536]:
        raise IngestFailure("binary content (NUL bytes), not text")
    if hint:
        try:
            return _checked(data.decode(hint), codecs.lookup(hint).name)
        except (LookupError, UnicodeDecodeError):
            pass
    from charset_normalizer import from_bytes

    best = from_bytes(data, cp_isolation=CANDIDATES).best()
    if best is None or best.chaos > 0.25:
        raise IngestFailure("undecodable bytes: not UTF-8/UTF-16 and no known encoding (gb18030, big5, ...) fits")
    return _checked(str(best), best.encoding)


def _checked(text: str, enc: str) -> tuple[str, str]:
    if _control_ratio(text) > 0.05:
        raise IngestFailure(f"binary content (control characters after decoding as {enc}), not text")
    return text.replace("\r\n", "\n").replace("\r", "\n"), enc
