"""Scanned-looking test documents: text drawn onto a page image and saved as an image-only PDF (no text
layer), for OCR tests and the benchmark. Also finds a font that can draw the text."""

from __future__ import annotations

import glob
import os
from pathlib import Path

CJK_FONT_GLOBS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/**/*CJK*.tt[cf]",
    "/usr/share/fonts/**/*[Hh]ei*.tt[cf]",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)


def find_cjk_font() -> str | None:
    """A font file that draws Chinese, from the system (DANLU_CJK_FONT wins), or None."""
    env = os.environ.get("DANLU_CJK_FONT")
    if env and Path(env).exists():
        return env
    for pattern in CJK_FONT_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return hits[0]
    return None


def latin_font() -> str:
    """DejaVuSans, which matplotlib ships inside its wheel (so it exists wherever danlu is installed)."""
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


def image_pdf(pages: list[list[str]], out: str | Path, font: str, font_px: int = 32, dpi: int = 150) -> Path:
    """Draw each page's lines in black on a white A4 image and save all pages as one image-only PDF."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = int(8.27 * dpi), int(11.69 * dpi)
    face = ImageFont.truetype(font, font_px)
    images = []
    for lines in pages:
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        y = int(0.8 * dpi)
        for line in lines:
            draw.text((int(0.8 * dpi), y), line, fill="black", font=face)
            y += int(font_px * 1.8)
        images.append(img)
    out = Path(out)
    images[0].save(out, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return out
