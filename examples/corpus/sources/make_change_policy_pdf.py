"""Builds examples/corpus/ops/change-policy.pdf (text written for danlu) so the bundled corpus has a real PDF with a
text layer: reportlab's built-in CID font STSong-Light (not embedded: readers map it through its standard CMap).

    .venv/bin/python examples/corpus/sources/make_change_policy_pdf.py
"""

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

TITLE = "生产环境变更管理规范"
SECTIONS = [
    ("目的", [
        "绝大多数线上故障都由变更引起。本规范规定生产环境变更的申请、评审、执行和回滚流程，"
        "目的是在不降低交付速度的前提下，减少变更带来的故障，并在故障发生时尽快恢复。",
    ]),
    ("适用范围", [
        "本规范适用于所有生产环境的变更，包括应用发布、配置修改、数据库结构变更、网络和防火墙调整、"
        "操作系统和软件包升级，以及云资源的创建和删除。",
    ]),
    ("变更分级", [
        "标准变更是经过多次验证、有固定步骤和自动回滚的变更，例如通过流水线发布应用，无需单独评审。",
        "普通变更需要在变更系统中提交申请，写明变更内容、影响范围、执行步骤、验证方法和回滚方案，"
        "由一名同组工程师评审通过后执行。",
        "重大变更是可能影响核心业务或者无法快速回滚的变更，例如数据库主从切换和核心网络调整，"
        "除评审外还需要在维护窗口内执行，并提前通知相关团队。",
    ]),
    ("执行要求", [
        "第一，能灰度的变更必须灰度，先在一小部分机器或流量上执行，观察监控指标无异常后再扩大范围。",
        "第二，执行前确认回滚方案可用，回滚步骤要和执行步骤一样写清楚。",
        "第三，执行过程中至少有一人专门观察监控，发现错误率或延迟上升时立即停止变更。",
        "第四，周五下午、节假日前一天以及重大活动期间，除紧急修复外禁止普通变更和重大变更。",
    ]),
    ("回滚", [
        "变更引起故障时，先回滚，再分析原因。不要在故障期间尝试向前修复，除非回滚比修复风险更大。"
        "回滚完成后，在变更记录中写明回滚的时间和原因，并在一周内完成复盘。",
    ]),
    ("记录与复盘", [
        "每一次变更都要在变更系统中留下记录，包括执行人、执行时间和结果。"
        "引起故障的变更必须复盘，复盘关注流程和工具的改进，而不是追究个人责任。",
    ]),
]


def build(out: Path) -> None:
    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    body = ParagraphStyle("body", fontName="STSong-Light", fontSize=11, leading=17, wordWrap="CJK")
    h1 = ParagraphStyle("h1", parent=body, fontSize=18, leading=26, spaceAfter=8)
    h2 = ParagraphStyle("h2", parent=body, fontSize=14, leading=22, spaceBefore=8, spaceAfter=4)
    story = [Paragraph(TITLE, h1)]
    for heading, paras in SECTIONS:
        story.append(Paragraph(heading, h2))
        for p in paras:
            story += [Paragraph(p, body), Spacer(1, 3 * mm)]
    doc = SimpleDocTemplate(str(out), pagesize=A4, title=TITLE, author="danlu", invariant=1,
                            leftMargin=20 * mm, rightMargin=20 * mm, topMargin=20 * mm, bottomMargin=20 * mm)
    doc.build(story)


if __name__ == "__main__":
    build(Path(__file__).resolve().parents[1] / "ops" / "change-policy.pdf")
