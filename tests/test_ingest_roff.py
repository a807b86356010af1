"""The man-page reader (roff.py, with mdoc.py and tbl.py): mdoc words and spacing, lists, tbl, font macros.

Each defect has a small roff snippet here. Where groff is installed, the mdoc snippets and the bundled OpenSSH and
sudo pages are also formatted by groff's mdoc package, and danlu's text must read the same (danlu == the reference
formatter); the expected strings themselves are checked with or without groff.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from danlu.data.ingest.html import html_to_markdown
from danlu.data.ingest.roff import roff_to_markdown

MAN = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "ops" / "man"
MDOC_PAGES = ["scp.1", "sftp.1", "ssh.1", "ssh-add.1", "ssh-agent.1", "ssh-keygen.1", "ssh-keyscan.1", "sudo.8",
              "visudo.8"]
GROFF = shutil.which("groff")
needs_groff = pytest.mark.skipif(GROFF is None, reason="groff is not installed (the comparison with its mdoc needs it)")
PAGE = ".Dd January 1, 2020\n.Dt TEST 1\n.Os\n.Sh NAME\n.Nm ssh\n.Nd remote login client\n.Sh DESCRIPTION\n"


def page(name: str) -> str:
    return roff_to_markdown((MAN / name).read_text(encoding="utf-8"))


def section(md: str, title: str) -> list[str]:
    """The paragraphs of one `## title` section of danlu's Markdown."""
    body = md.split(f"## {title}\n\n", 1)[1].split("\n## ", 1)[0]
    return [p.strip("\n") for p in body.split("\n\n") if p.strip()]


def groff(src: str) -> str:
    """groff's terminal rendering of a page: no hyphenation, no line filling limits, no bold/underline."""
    out = subprocess.run([GROFF, "-k", "-mandoc", "-Tutf8", "-rLL=20000n", "-rHY=0", "-P-cbou"], input=src,
                         capture_output=True, text=True, check=True).stdout
    return "\n".join(out.split("\n")[1:-2])  # less the running header and footer


def same_text(s: str) -> str:
    """Text compared across danlu and groff: groff's angle brackets and hyphen glyphs as ASCII, blanks collapsed."""
    for a, b in (("⟨", "<"), ("⟩", ">"), ("‐", "-"), ("−", "-")):
        s = s.replace(a, b)
    return re.sub(r"\s+", " ", s).strip()


def groff_paragraphs(body: str) -> list[str]:
    text = groff(PAGE + body).split("\nDESCRIPTION\n", 1)[1]
    return [same_text(p) for p in re.split(r"\n\s*\n", text) if p.strip()]


# --- mdoc words: the defects, each checked against groff's mdoc where it is installed -------------------------

INLINE = [
    # 1. .Nm without arguments: the page's name, inline, in the same paragraph
    ("Forces\n.Nm\nto use IPv4 addresses only.", "Forces ssh to use IPv4 addresses only."),
    (".Nm\nconnects; later\n.Nm scp\ndoes not rename it:\n.Nm .", "ssh connects; later scp does not rename it: ssh."),
    # 2. .Fl dashes each flag; a lone "," or "|" is punctuation, not a flag
    (".Fl A , -askpass", "-A, --askpass"),
    (".Fl a | b", "-a | -b"),
    (".Fl a b c", "-a -b -c"),
    (".Fl Ns Ar x", "-x"),
    # 3. closing punctuation attaches to what precedes, opening to what follows; Ns, Pf, Ap, Sm
    ("Specify\n.Ar command .\nNext", "Specify command. Next"),
    (".Fl -close-from Ns = Ns Ar num", "--close-from=num"),
    (".Op Fl a Ar file ,", "[-a file],"),
    (".Op Ar command Op Ar arg ...", "[command [arg ...]]"),
    (".Pq Fl a , Fl b", "(-a, -b)"),
    ("see\n.Pf ( Fl a )", "see (-a)"),
    (".Ar user Ap s\nkey", "user's key"),
    (".Xr ssh_config 5 ;\nthen", "ssh_config(5); then"),
    (".Dq none .", "“none”."),
    ("(default:\n.Ql ~ ) .", "(default: ‘~’)."),
    ("the\n.Ux Ns -domain\nsocket", "the UNIX-domain socket"),
    ("word\n.Ar \\&. y", "word . y"),  # an escaped delimiter is a word
    (".Ar five Ns\nsix", "fivesix"),  # Ns at the end of a line joins the next line
    ("-D\n.Sm off\n.Oo Ar bind_address : Oc\n.Ar port\n.Sm on\nopens", "-D [bind_address:]port opens"),
    ("x\n.Oo\n.Fl v\n.Oc\ny", "x [-v] y"),
    (".Ar file \\\" a comment on the macro line\nends", "file ends"),
    # other mdoc macros that print words of their own
    (".Ex -std", "The ssh utility exits 0 on success, and >0 if an error occurs."),
    (".An -nosplit\n.An Tatu Ylonen Aq Mt ylo@cs.hut.fi", "Tatu Ylonen <ylo@cs.hut.fi>"),
    (".Rs\n.%A S. Lehtinen\n.%A C. Lonvick\n.%D January 2006\n.%R RFC 4250\n"
     ".%T The Protocol Assigned Numbers\n.Re",
     "S. Lehtinen and C. Lonvick, The Protocol Assigned Numbers, RFC 4250, January 2006."),
    ("an integer \\*(Ge 1,\n.Bx 4.4\nand\n.St -p1003.2", "an integer ≥ 1, 4.4BSD and IEEE Std 1003.2 (“POSIX.2”)"),
]


@pytest.mark.parametrize("body, expected", INLINE, ids=[b.split("\n")[0][:30] for b, _ in INLINE])
def test_mdoc_words_and_spacing(body: str, expected: str) -> None:
    assert section(roff_to_markdown(PAGE + body), "DESCRIPTION") == [expected]


@needs_groff
@pytest.mark.parametrize("body, expected", INLINE, ids=[b.split("\n")[0][:30] for b, _ in INLINE])
def test_mdoc_words_and_spacing_match_groff(body: str, expected: str) -> None:
    assert groff_paragraphs(body) == [expected]


def test_mdoc_synopsis_starts_a_line_at_each_nm() -> None:
    src = (".Dd x\n.Dt SSH-KEYGEN 1\n.Os\n.Sh NAME\n.Nm ssh-keygen\n.Nd keys\n.Sh SYNOPSIS\n.Nm ssh-keygen\n"
           ".Op Fl q\n.Op Fl a Ar rounds\n.Nm ssh-keygen\n.Fl p\n.Op Fl f Ar keyfile\n.Nm\n.Fl i\n"
           ".Sh DESCRIPTION\n.Nm\nmanages keys.\n")
    md = roff_to_markdown(src)
    expected = ["ssh-keygen [-q] [-a rounds]", "ssh-keygen -p [-f keyfile]", "ssh-keygen -i"]
    assert section(md, "SYNOPSIS") == ["\n".join(expected)]
    assert section(md, "DESCRIPTION") == ["ssh-keygen manages keys."]
    if GROFF:
        lines = [same_text(x) for x in groff(src).split("SYNOPSIS\n", 1)[1].split("\n\n")[0].split("\n")]
        assert lines == expected


# --- mdoc blocks ------------------------------------------------------------------------------------------------

def test_mdoc_lists_nest_and_keep_their_paragraphs() -> None:
    body = """The options are:
.Bl -tag -width Ds
.It Fl e
Edit files:
.Bl -enum
.It
copy them,
.It
run the editor.
.El
.Pp
More about
.Fl e .
.Bd -literal -offset indent
$ sudoedit /etc/hosts
.Ed
.It Fl D Xo
.Sm off
.Oo Ar bind_address : Oc
.Ar port
.Sm on
.Xc
Dynamic forwarding.
.El
After the list.
.Bl -column "Name" "Meaning"
.It Em Name Ta Em Meaning
.It Cm yes Ta on
.It Cm no	off
.El
"""
    md = roff_to_markdown(PAGE + body)
    assert md.split("## DESCRIPTION\n\n", 1)[1] == (
        "The options are:\n\n"
        "- -e\n\n  Edit files:\n\n  1. copy them,\n\n  2. run the editor.\n\n  More about -e.\n\n"
        "  ```\n  $ sudoedit /etc/hosts\n  ```\n\n"
        "- -D [bind_address:]port\n\n  Dynamic forwarding.\n\n"
        "After the list.\n\n"
        "| Name | Meaning |\n| --- | --- |\n| yes | on |\n| no | off |")


# --- the bundled Debian pages -----------------------------------------------------------------------------------

def test_bundled_openssh_and_sudo_pages_read_right() -> None:
    ssh = page("ssh.1")
    assert "- -4\n\n  Forces ssh to use IPv4 addresses only.\n\n" in ssh
    assert "[-D [bind_address:]port]" in ssh
    assert "[-w local_tun[:remote_tun]] destination [command [argument ...]]" in ssh
    assert "- -D [bind_address:]port\n\n  Specifies a local “dynamic” application-level port forwarding." in ssh
    assert "TCP ports and UNIX-domain sockets" in ssh
    sudo = page("sudo.8")
    for tag in ("-A, --askpass", "-C num, --close-from=num", "-u user, --user=user"):
        assert f"\n- {tag}\n\n  " in sudo
    assert "\n- -r role, --role=role\n\n  Run the command with an SELinux" in sudo  # `.nr SL 1` / `.if \n(SL`
    assert "\n- -a type, --auth-type=type" not in sudo  # `.nr BA 0`: not on this system
    assert "-nosplit" not in page("ssh-agent.1") and "-nosplit" not in page("ssh-keyscan.1")
    assert "The scp utility exits 0 on success, and >0 if an error occurs." in page("scp.1")
    for name in MDOC_PAGES:  # no mdoc punctuation set apart by a space: "a command ." / "--close-from = num"
        md = page(name)
        assert not re.search(r"\w (?:[.,;:)\]]|=) ?\w*$", md, re.M), name


@needs_groff
@pytest.mark.parametrize("name", MDOC_PAGES)
def test_bundled_mdoc_pages_read_like_groff(name: str) -> None:
    """Every paragraph, list head and code line of danlu's Markdown of the page is in groff's rendering of it."""
    reference = same_text(groff((MAN / name).read_text(encoding="utf-8")))
    missing = []
    for block in page(name).split("\n\n")[1:]:  # less the "# SSH(1)" title (groff's running header)
        for line in block.split("\n"):
            text = re.sub(r"^\s*(?:#+ |- |\d+\. |```)", "", line).strip()
            if text and same_text(text) not in reference:
                missing.append(text)
    assert not missing, missing[:5]


# --- man(7) font macros, escapes and requests --------------------------------------------------------------------

def test_escaped_space_in_font_macro_arguments() -> None:
    md = roff_to_markdown(".TH SQLITE3 1\n.SH OPTIONS\n.TP\n.BI \\-cmd\\  command\nrun command first\n"
                          ".PP\nsee\n.BR foo\\ bar (1)\n")
    assert "- **-cmd** *command*\n\n  run command first" in md
    assert "see **foo bar**(1)" in md
    assert "\\" not in md
    assert "- **-cmd** *command*" in page("sqlite3.1")


def test_backslashes_escapes_and_page_strings() -> None:
    md = roff_to_markdown(".TH X 1\n.SH A\nprint \"a\\\\n\" and \\e; the packet\\*(Aqs path\n.br\nnext line\n")
    assert 'print "a\\n" and \\; the packet\'s path\nnext line' in md  # \\ and \e print "\"; a .br line: no space
    assert "doesn't exist anymore" in page("ping.8")  # DocBook's \*(Aq


def test_number_register_conditions() -> None:
    src = (".TH X 1\n.nr SL 1\n.nr BA 0\n.SH A\nstart\n.if \\n(SL \\{\\\n.B selinux\n.\\}\n"
           ".if \\n(BA \\{\\\n.B bsdauth\n.\\}\n.ie \\n(BA .B yes\n.el .B no\n.if n .B device\nend\n")
    assert section(roff_to_markdown(src), "A") == ["start **selinux** **no** end"]


# --- tbl ---------------------------------------------------------------------------------------------------------

ZSTD_LIKE = r""".TH "ZSTD" "1" "February 2023" "zstd 1.5.4" "User Commands"
.SH "SYNOPSIS"
.TS
allbox;
\fBzstd\fR [\fIOPTIONS\fR] [\-	\fIINPUT\-FILE\fR] [\-o \fIOUTPUT\-FILE\fR]
.TE
.P
\fBzstdmt\fR is equivalent to \fBzstd \-T0\fR
.SH "DESCRIPTION"
\fBzstd\fR is a fast lossless compression algorithm\.
.SS "Levels"
.TS
tab(:);
l l.
Level:Speed
1:fast
.TE
"""


def test_tbl_options_line_without_a_format_is_not_a_table() -> None:
    """zstd.1 (Debian's zstd package): `allbox;` and then data. groff gives up on that table; its text is kept as
    text, and the table ends at its .TE instead of swallowing the page."""
    md = roff_to_markdown(ZSTD_LIKE)
    assert section(md, "SYNOPSIS") == ["**zstd** [*OPTIONS*] [- *INPUT-FILE*] [-o *OUTPUT-FILE*]",
                                       "**zstdmt** is equivalent to **zstd -T0**"]
    assert section(md, "DESCRIPTION") == ["**zstd** is a fast lossless compression algorithm.", "### Levels",
                                          "| Level | Speed |\n| --- | --- |\n| 1 | fast |"]


def test_tbl_formats_spans_text_blocks_and_new_formats() -> None:
    src = """.TH X 1
.SH A
.TS
center tab(;) allbox;
c s
l l,
l l.
Title
a;b
_
c;d
.T&
l s.
wide
.T&
l l.
T{
a long
.br
cell
T};y
.TE
after
"""
    assert section(roff_to_markdown(src), "A") == [
        "| Title |  |\n| --- | --- |\n| a | b |\n| c | d |\n| wide |  |\n| a long cell | y |", "after"]


# --- HTML --------------------------------------------------------------------------------------------------------

def test_html_line_after_br_starts_without_a_space() -> None:
    md, _ = html_to_markdown("<p>line one<br>\n  line two<br/>line three</p><pre>keep<br>\n  this</pre>")
    assert md.startswith("line one\nline two\nline three\n")
    assert "\n  this" in md  # preformatted text keeps its spaces
