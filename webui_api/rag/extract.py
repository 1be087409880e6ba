"""Text extraction from uploaded bytes: plain text and code, Markdown, CSV, JSON, HTML, PDF and DOCX."""
from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import re
import resource
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from ..config import Settings
from ..errors import EMPTY_CONTENT, ApiError, BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger("webui_api.rag")

# Extensions read as text; anything else is sniffed (text if it decodes cleanly, else refused).
MARKDOWN_EXT = {"md", "markdown", "mdx", "rst", "txt", "text", "org", "adoc", "asciidoc", "log", ""}
CODE_EXT = {
    "py", "pyi", "js", "mjs", "cjs", "ts", "tsx", "jsx", "java", "kt", "kts", "scala", "go", "rs", "c", "h",
    "cc", "cpp", "cxx", "hpp", "hh", "cs", "rb", "php", "pl", "pm", "swift", "m", "mm", "r", "lua", "sh",
    "bash", "zsh", "fish", "ps1", "bat", "cmd", "sql", "yaml", "yml", "toml", "ini", "cfg", "conf", "env",
    "properties", "xml", "svg", "css", "scss", "sass", "less", "vue", "svelte", "dart", "ex", "exs", "erl",
    "hs", "clj", "el", "vim", "tex", "bib", "graphql", "proto", "gradle", "makefile", "dockerfile", "tf",
    "jsonl", "ndjson", "tsv", "diff", "patch", "srt", "vtt", "ipynb",
}
HTML_EXT = {"html", "htm", "xhtml"}
# Formats we recognise but cannot turn into text: refused up front with a precise reason.
UNSUPPORTED_EXT = {
    "doc": "legacy Word .doc", "xls": "Excel", "xlsx": "Excel", "ppt": "PowerPoint", "pptx": "PowerPoint",
    "odt": "OpenDocument", "ods": "OpenDocument", "odp": "OpenDocument", "epub": "EPUB", "rtf": "RTF",
    "msg": "Outlook message", "zip": "ZIP archive", "gz": "gzip archive", "tar": "tar archive",
    "7z": "7-Zip archive", "rar": "RAR archive", "exe": "executable", "dll": "library", "so": "library",
    "png": "image", "jpg": "image", "jpeg": "image", "gif": "image", "webp": "image", "bmp": "image",
    "tif": "image", "tiff": "image", "ico": "image", "heic": "image", "mp3": "audio", "wav": "audio",
    "ogg": "audio", "flac": "audio", "m4a": "audio", "mp4": "video", "mov": "video", "avi": "video",
    "mkv": "video", "webm": "video", "sqlite": "database", "db": "database", "bin": "binary",
}
_MAGIC = [
    (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
    (b"\x1f\x8b", "gzip archive"), (b"7z\xbc\xaf", "7-Zip archive"), (b"Rar!", "RAR archive"),
    (b"\x7fELF", "executable"), (b"MZ", "executable"), (b"SQLite format 3", "SQLite database"),
    (b"\xd0\xcf\x11\xe0", "legacy Office document"), (b"OggS", "audio"), (b"ID3", "audio"),
    (b"fLaC", "audio"),
]
# Zip-based formats: refuse archives whose directory says they expand beyond this, and stop reading any that
# turn out to expand further than their directory said.
MAX_UNZIPPED_BYTES = 256 * 1024 * 1024
MAX_EXTRACTED_CHARS = Settings.RAG_MAX_EXTRACTED_CHARS  # the setting's default (config.py says why)
# Each DOCX paragraph or table row costs this many characters of that budget besides its text, so a document
# of millions of empty paragraphs meets the limit as soon as one of text would (and extraction stays short).
BLOCK_CHARGE = 64
# PDF and DOCX are read by third-party parsers that a crafted file can keep busy, or swell, for as long as it
# likes: they run in a child process that the kernel stops past these limits (the upload gets a 413).
SANDBOXED_KINDS = {"pdf", "docx"}
SANDBOX_CPU_SECONDS = 30
SANDBOX_WALL_SECONDS = 60  # a busy machine gives the child less than all of its time
SANDBOX_MEMORY_BYTES = 2 * 1024**3
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DOCX_READ_BYTES = 1 << 16


@dataclass
class Extracted:
    """Extracted text plus what the chunker and citations need to know about it."""

    text: str
    kind: str                                        # text | markdown | code | csv | json | html | pdf | docx
    pages: list[int] = field(default_factory=list)  # PDF: start offset of each page in `text`

    @property
    def markdown(self) -> bool:
        """Whether Markdown headings are structure here (not comments in code)."""
        return self.kind in ("markdown", "text", "docx", "html")

    def page_at(self, offset: int) -> int | None:
        """1-based page holding `offset`, for PDFs."""
        page = None
        for number, start in enumerate(self.pages, 1):
            if start > offset:
                break
            page = number
        return page


def extension(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1].lower()
    if name in ("makefile", "dockerfile"):
        return name
    return name.rsplit(".", 1)[-1] if "." in name.strip(".") else ""


def check_supported(head: bytes, filename: str, content_type: str | None = None) -> str:
    """Cheap up-front check on the first bytes; returns the kind or raises 415 with the reason."""
    ext = extension(filename)
    if ext in UNSUPPORTED_EXT:
        raise UnsupportedMediaType(f"Files of type .{ext} ({UNSUPPORTED_EXT[ext]}) are not supported; "
                                   "upload text, Markdown, code, CSV, JSON, HTML, PDF or DOCX.")
    kind = _kind(head, ext, content_type or "")
    if kind in ("pdf", "docx"):
        return kind
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise UnsupportedMediaType(f"{filename!r} looks like a {what}, which cannot be turned into text.")
    if head.startswith(b"PK\x03\x04"):
        raise UnsupportedMediaType(f"{filename!r} is a ZIP-based file that is not a DOCX document; "
                                   "only DOCX is supported among Office formats.")
    if _looks_binary(head):
        raise UnsupportedMediaType(f"{filename!r} is a binary file; only text-based files, PDF and DOCX "
                                   "can be processed.")
    return kind


class _Budget:
    """The characters an extraction may still produce. Readers that can expand their input (CSV labels every
    cell, a small DOCX or PDF can unpack to millions of characters) spend as they go and stop early."""

    def __init__(self, limit: int | None, filename: str):
        self.limit, self.left, self.filename = limit, limit, filename

    def spend(self, chars: int) -> None:
        if self.left is None:
            return
        self.left -= chars
        if self.left < 0:
            raise PayloadTooLarge(f"{self.filename!r} holds more text than the {self.limit:,} characters one "
                                  f"file may yield (RAG_MAX_EXTRACTED_CHARS).")


def check_length(text: str, filename: str, max_chars: int | None) -> None:
    """Text handed in directly (content updates, process/text) obeys the same limit as extracted text."""
    _Budget(max_chars, filename).spend(len(text))


def extract(data: bytes, filename: str, content_type: str | None = None, *,
            max_chars: int | None = MAX_EXTRACTED_CHARS) -> Extracted:
    """Turn uploaded bytes into text. Unsupported/binary → 415; no text → 400 EMPTY_CONTENT; more than
    `max_chars` characters of text (None: no limit) → 413."""
    if not data:
        raise BadRequest(EMPTY_CONTENT)
    kind = check_supported(data[:8192], filename, content_type)
    try:
        result = _read(kind, data, filename, max_chars)
        _Budget(max_chars, filename).spend(len(result.text))  # every format, whatever its reader spent
    except (BadRequest, UnsupportedMediaType, PayloadTooLarge):
        raise
    except Exception as exc:  # third-party parsers fail in many ways on damaged files: still the file's fault
        log.info("extracting %r (%s) failed: %r", filename, kind, exc)
        raise BadRequest(f"{filename!r} could not be read as {kind.upper()}: {type(exc).__name__}") from None
    result.text = result.text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not result.text.strip():
        raise BadRequest(EMPTY_CONTENT)
    return result


def _read(kind: str, data: bytes, filename: str, max_chars: int | None) -> Extracted:
    if kind in SANDBOXED_KINDS:
        return _read_in_child(kind, data, filename, max_chars)
    return _READERS.get(kind, _read_text)(data, filename, _Budget(max_chars, filename))


def _kind(head: bytes, ext: str, content_type: str) -> str:
    content_type = content_type.split(";")[0].strip().lower()
    if ext == "pdf" or head.startswith(b"%PDF-") or content_type == "application/pdf":
        return "pdf"
    if ext == "docx" or content_type.endswith("wordprocessingml.document"):
        return "docx"
    if ext in HTML_EXT or content_type in ("text/html", "application/xhtml+xml"):
        return "html"
    if ext == "csv" or content_type == "text/csv":
        return "csv"
    if ext == "json" or content_type == "application/json":
        return "json"
    if ext in ("md", "markdown", "mdx") or content_type == "text/markdown":
        return "markdown"
    return "code" if ext in CODE_EXT else "text"


def _looks_binary(head: bytes) -> bool:
    if not head:
        return False
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for byte in head if byte < 32 and byte not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.05


def decode(data: bytes) -> str:
    """Bytes → str: BOMs, then strict UTF-8, then Windows-1252, then Latin-1 (never fails)."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_text(data: bytes, filename: str, budget: _Budget) -> Extracted:
    kind = _kind(b"", extension(filename), "")
    return Extracted(decode(data), kind if kind in ("markdown", "code") else "text")


def _read_json(data: bytes, filename: str, budget: _Budget) -> Extracted:
    text = decode(data)
    try:
        json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{filename!r} is not valid JSON: {exc}") from None
    return Extracted(text, "json")


def _read_csv(data: bytes, filename: str, budget: _Budget) -> Extracted:
    """One block of `column: value` lines per row, so every chunk carries its column names."""
    text = decode(data)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    except csv.Error:
        return Extracted(text, "csv")  # not really CSV: keep the text as it is
    if len(rows) < 2:
        return Extracted(text, "csv")
    header = [name.strip() or f"column {i + 1}" for i, name in enumerate(rows[0])]
    blocks = []
    for row in rows[1:]:
        lines = [f"{header[i] if i < len(header) else f'column {i + 1}'}: {cell.strip()}"
                 for i, cell in enumerate(row) if cell.strip()]
        blocks.append("\n".join(lines))
        budget.spend(len(blocks[-1]) + 2)
    return Extracted("\n\n".join(blocks), "csv")


class _VisibleText(HTMLParser):
    """Collects the text a browser would show (plus the title); scripts, styles and the like are skipped."""

    SKIP = {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
             "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "dt", "dd", "nav", "aside",
             "main", "figure", "figcaption", "form", "address", "details", "summary"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skip_depth = 0
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skip_depth += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")
            if tag[0] == "h" and tag[1:].isdigit():
                self.parts.append("#" * int(tag[1:]) + " ")  # headings keep their structure for the chunker
            elif tag == "li":
                self.parts.append("- ")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
        elif not self.skip_depth:
            self.parts.append(data)


def _read_html(data: bytes, filename: str, budget: _Budget) -> Extracted:
    parser = _VisibleText()
    parser.feed(decode(data))
    parser.close()
    lines = [re.sub(r"[ \t\f\v\u00a0]+", " ", line).strip() for line in "".join(parser.parts).split("\n")]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = " ".join("".join(parser.title).split())
    if title and not body.startswith(title) and body:
        body = f"{title}\n\n{body}"
    return Extracted(body or title, "html")


def _read_pdf(data: bytes, filename: str, budget: _Budget) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedMediaType(f"{filename!r} is a password-protected PDF; "
                                       "upload an unprotected copy.")
        texts = []
        for page in reader.pages:
            texts.append(page.extract_text() or "")
            budget.spend(len(texts[-1]) + 2)
    except (UnsupportedMediaType, PayloadTooLarge):
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
            RecursionError, NotImplementedError) as exc:
        raise BadRequest(f"{filename!r} could not be read as a PDF: {exc}") from None
    pages, parts, offset = [], [], 0
    for text in texts:
        text = text.strip()
        pages.append(offset)
        parts.append(text)
        offset += len(text) + 2
    return Extracted("\n\n".join(parts), "pdf", pages)


def _read_docx(data: bytes, filename: str, budget: _Budget) -> Extracted:
    """A streaming walk of word/document.xml (python-docx resolved each paragraph's style from scratch, which
    made the time grow with the square of the paragraph count); same text as python-docx gives."""
    from lxml import etree

    try:
        with _open_docx(data, filename) as archive:
            levels = _heading_levels(archive)
            with archive.open("word/document.xml") as xml:
                blocks = [block for block in _docx_blocks(xml, levels, budget, filename) if block.strip()]
    except (etree.LxmlError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise BadRequest(f"{filename!r} could not be read as a DOCX document: {exc}") from None
    return Extracted("\n\n".join(blocks), "docx")


def _docx_blocks(xml, levels: "_HeadingLevels", budget: _Budget, filename: str):
    """Paragraphs and tables of the body in document order; headings become Markdown headings. Paragraphs and
    table rows are dropped from the tree once read, so memory holds one of them, not the document; each one
    costs BLOCK_CHARGE characters of the budget besides its text, so countless empty ones cannot run on."""
    table = _TableText()
    for element in _docx_elements(xml, filename):
        parent = element.getparent()
        if element.tag == f"{_W}tr" and parent is not None and _in_body(parent):
            budget.spend(table.add(element) + BLOCK_CHARGE)
        elif parent is None or parent.tag != f"{_W}body":
            continue  # inside a table cell: its row reads it
        elif element.tag == f"{_W}p":
            block = _docx_paragraph(element, levels)
            budget.spend(len(block) + BLOCK_CHARGE)
            yield block
        else:
            yield table.finish()
        element.clear()
        while element.getprevious() is not None:
            del parent[0]


def _in_body(element) -> bool:
    parent = element.getparent()
    return parent is not None and parent.tag == f"{_W}body"


def _docx_elements(xml, filename: str):
    """Each w:p, w:tr and w:tbl of word/document.xml as it ends, reading at most MAX_UNZIPPED_BYTES."""
    from lxml import etree

    parser = etree.XMLPullParser(events=("end",), tag=(f"{_W}p", f"{_W}tr", f"{_W}tbl"),
                                 resolve_entities=False, no_network=True)
    unpacked = 0
    while chunk := xml.read(_DOCX_READ_BYTES):
        unpacked += len(chunk)
        if unpacked > MAX_UNZIPPED_BYTES:
            raise BadRequest(_too_big(filename))
        parser.feed(chunk)
        yield from (element for _, element in parser.read_events())
    parser.close()


def _docx_paragraph(paragraph, levels: "_HeadingLevels") -> str:
    text = _paragraph_text(paragraph).strip()
    style = paragraph.find(f"{_W}pPr/{_W}pStyle")
    level = levels.of(style.get(f"{_W}val") if style is not None else None)
    return f"{'#' * level} {text}" if level and text else text


def _paragraph_text(paragraph) -> str:
    """python-docx's Paragraph.text: runs and hyperlinked runs, with tabs, breaks and hyphens as text."""
    parts = []
    for node in paragraph.iterchildren(f"{_W}r", f"{_W}hyperlink"):
        for run in ([node] if node.tag == f"{_W}r" else node.iterchildren(f"{_W}r")):
            parts.extend(_RUN_TEXT[item.tag](item) for item in run.iterchildren(*_RUN_TEXT))
    return "".join(parts)


_RUN_TEXT = {
    f"{_W}t": lambda item: item.text or "",
    f"{_W}tab": lambda item: "\t",
    f"{_W}ptab": lambda item: "\t",
    f"{_W}cr": lambda item: "\n",
    f"{_W}noBreakHyphen": lambda item: "-",
    f"{_W}br": lambda item: "\n" if item.get(f"{_W}type", "textWrapping") == "textWrapping" else "",
}


class _TableText:
    """The body table being read, one line per row with cells joined by " | "; a merged cell repeats its
    text, as python-docx's row.cells does."""

    def __init__(self):
        self.rows: list[str] = []
        self.above: dict[int, str] = {}  # grid column -> text of the cell there in the row above

    def add(self, row) -> int:
        cells, column = [], _grid_value(row.find(f"{_W}trPr/{_W}gridBefore"), 0)
        for cell in row.iterchildren(f"{_W}tc"):
            span = _grid_value(cell.find(f"{_W}tcPr/{_W}gridSpan"), 1)
            merge = cell.find(f"{_W}tcPr/{_W}vMerge")
            if merge is not None and merge.get(f"{_W}val", "continue") == "continue":
                text = self.above.get(column, "")
            else:
                text = "\n".join(_paragraph_text(p) for p in cell.iterchildren(f"{_W}p")).strip()
            self.above[column] = text
            cells += [text] * span
            column += span
        self.rows.append(" | ".join(cells))
        return len(self.rows[-1])

    def finish(self) -> str:
        text = "\n".join(self.rows)
        self.rows, self.above = [], {}
        return text


def _grid_value(element, default: int) -> int:
    try:
        return max(1, min(int(element.get(f"{_W}val")), 64)) if element is not None else default
    except (TypeError, ValueError):
        return default


class _HeadingLevels:
    """Heading level (0: none) of each paragraph style id, from word/styles.xml; as python-docx does, a
    paragraph without a style, or naming one that does not exist, has the default paragraph style."""

    def __init__(self, by_id: dict[str, int], default: int):
        self.by_id, self.default = by_id, default

    def of(self, style_id: str | None) -> int:
        return self.by_id.get(style_id, self.default) if style_id is not None else self.default


def _heading_levels(archive: zipfile.ZipFile) -> _HeadingLevels:
    from lxml import etree

    if "word/styles.xml" not in archive.namelist():
        return _HeadingLevels({}, 0)
    root = etree.fromstring(archive.read("word/styles.xml"),
                            etree.XMLParser(resolve_entities=False, no_network=True))
    by_id, default = {}, 0
    for style in root.iterchildren(f"{_W}style"):
        if style.get(f"{_W}type") != "paragraph":
            continue
        name = style.find(f"{_W}name")
        level = _heading_level(name.get(f"{_W}val", "") if name is not None else "")
        by_id[style.get(f"{_W}styleId")] = level
        if style.get(f"{_W}default") in ("1", "true", "on"):
            default = level
    return _HeadingLevels(by_id, default)


def _heading_level(style: str) -> int:
    if style in ("Title", "title"):  # python-docx shows Word's built-in lower-case names capitalised
        return 1
    match = re.fullmatch(r"[Hh]eading (\d)", style)
    return min(int(match.group(1)), 6) if match else 0


def _open_docx(data: bytes, filename: str) -> zipfile.ZipFile:
    """The archive, once its directory shows a Word document that does not expand beyond the limit."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BadRequest(f"{filename!r} could not be read as a DOCX document: "
                         "not a valid ZIP container") from None
    if "word/document.xml" not in archive.namelist():
        archive.close()
        raise UnsupportedMediaType(f"{filename!r} is not a Word (DOCX) document.")
    if sum(info.file_size for info in archive.infolist()) > MAX_UNZIPPED_BYTES:
        archive.close()
        raise BadRequest(_too_big(filename))
    return archive


def _too_big(filename: str) -> str:
    return f"{filename!r} expands to more than the {MAX_UNZIPPED_BYTES // 2**20} MB allowed when unpacked."


_READERS = {"pdf": _read_pdf, "docx": _read_docx, "html": _read_html, "csv": _read_csv, "json": _read_json}


_REFUSALS = {cls.status: cls for cls in (BadRequest, PayloadTooLarge, UnsupportedMediaType)}


def _read_in_child(kind: str, data: bytes, filename: str, max_chars: int | None) -> Extracted:
    """The reader of `kind`, run by `python -m webui_api.rag.extract` under CPU and memory limits."""
    search_path = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]  # this very code
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, search_path))}
    command = [sys.executable, "-m", __name__, kind, filename, str(max_chars or 0), str(SANDBOX_CPU_SECONDS),
               str(SANDBOX_MEMORY_BYTES)]
    try:
        done = subprocess.run(command, input=data, capture_output=True, env=env, timeout=SANDBOX_WALL_SECONDS)
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise PayloadTooLarge(_overworked(filename)) from None
    if done.returncode != 0 or not done.stdout:
        log.warning("extracting %r (%s) in a child process: exit %s, %s", filename, kind, done.returncode,
                    done.stderr.decode(errors="replace")[-300:])
        raise PayloadTooLarge(_overworked(filename))
    reply = json.loads(done.stdout)
    if "status" in reply:
        raise _REFUSALS.get(reply["status"], BadRequest)(reply["detail"])
    return Extracted(reply["text"], reply["kind"], reply["pages"])


def _overworked(filename: str) -> str:
    return (f"{filename!r} took more than the {SANDBOX_CPU_SECONDS} s of CPU or "
            f"{SANDBOX_MEMORY_BYTES // 1024**3} GB of memory that reading one file may use.")


def _child_main(kind: str, filename: str, max_chars: str, cpu_seconds: str, memory_bytes: str) -> None:
    """In the child: limits first, then the file from stdin, then one JSON reply on stdout."""
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_seconds), int(cpu_seconds) + 5))
    resource.setrlimit(resource.RLIMIT_AS, (int(memory_bytes), int(memory_bytes)))
    data = sys.stdin.buffer.read()
    try:
        result = _READERS[kind](data, filename, _Budget(int(max_chars) or None, filename))
        reply = {"text": result.text, "kind": result.kind, "pages": result.pages}
    except ApiError as exc:
        reply = {"status": exc.status, "detail": exc.detail}
    except MemoryError:
        reply = {"status": PayloadTooLarge.status, "detail": _overworked(filename)}
    except Exception as exc:  # third-party parsers fail in many ways on damaged files: still the file's fault
        reply = {"status": BadRequest.status,
                 "detail": f"{filename!r} could not be read as {kind.upper()}: {type(exc).__name__}"}
    sys.stdout.write(json.dumps(reply))


if __name__ == "__main__":
    _child_main(*sys.argv[1:6])
