"""Extraction for every supported type, and clear refusals for the rest."""
from __future__ import annotations

import io
import json
import struct
import zipfile

import pytest

from webui_api.errors import EMPTY_CONTENT, BadRequest, PayloadTooLarge, UnsupportedMediaType
from webui_api.rag.extract import extract


def make_pdf(pages: list[str]) -> bytes:
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    for text in pages:
        y = 800
        for line in text.split("\n"):
            pdf.drawString(72, y, line)
            y -= 16
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_docx(heading: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_plain_text_and_code_and_markdown():
    assert extract(b"hello\r\nworld", "a.txt").text == "hello\nworld"
    code = extract(b"# comment\ndef f():\n    return 1\n", "mod.py")
    assert code.kind == "code" and not code.markdown
    md = extract("# Titre\n\nÉté".encode(), "notes.md")
    assert md.kind == "markdown" and md.markdown and "Été" in md.text


def test_legacy_encodings_and_bom():
    assert extract("café".encode("cp1252"), "x.txt").text == "café"
    assert extract("\ufeffbom".encode("utf-8"), "x.txt").text == "bom"
    assert extract("wide".encode("utf-16"), "x.txt").text == "wide"


def test_csv_rows_become_labelled_blocks():
    result = extract(b"name,city\nAda,London\nLin,Paris\n", "people.csv")
    assert result.kind == "csv"
    assert result.text == "name: Ada\ncity: London\n\nname: Lin\ncity: Paris"


def test_json_is_kept_and_invalid_json_is_refused():
    body = json.dumps({"k": "v"}).encode()
    assert extract(body, "d.json").text == body.decode()
    with pytest.raises(BadRequest) as err:
        extract(b"{nope", "d.json")
    assert "not valid JSON" in err.value.detail


def test_html_keeps_visible_text_only():
    html = (b"<html><head><title>Page T</title><style>.x{color:red}</style>"
            b"<script>var secret='hidden';</script></head><body><h1>Heading</h1>"
            b"<p>Visible &amp; kept</p><noscript>nojs</noscript><ul><li>one</li></ul></body></html>")
    text = extract(html, "page.html").text
    assert "Visible & kept" in text and "# Heading" in text and "- one" in text
    assert text.startswith("Page T")
    assert "secret" not in text and "color" not in text and "nojs" not in text


def test_pdf_text_and_page_offsets():
    result = extract(make_pdf(["Alpha page one", "Beta page two"]), "doc.pdf", "application/pdf")
    assert result.kind == "pdf"
    assert "Alpha page one" in result.text and "Beta page two" in result.text
    assert result.page_at(result.text.index("Beta")) == 2
    assert result.page_at(0) == 1


def test_pdf_without_text_is_empty_and_broken_pdf_is_400():
    with pytest.raises(BadRequest) as err:
        extract(make_pdf([""]), "blank.pdf")
    assert err.value.detail == EMPTY_CONTENT
    with pytest.raises(BadRequest) as err:
        extract(b"%PDF-1.4 garbage garbage", "bad.pdf")
    assert "could not be read as a PDF" in err.value.detail


def test_docx_paragraphs_headings_and_tables():
    data = make_docx("Policy", ["Refunds take five days."], [["Plan", "Price"], ["Pro", "10"]])
    result = extract(data, "policy.docx")
    assert result.kind == "docx"
    assert result.text.startswith("# Policy")
    assert "Refunds take five days." in result.text and "Pro | 10" in result.text


def test_zip_that_is_not_docx_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "x")
    with pytest.raises(UnsupportedMediaType):
        extract(buffer.getvalue(), "archive.docx")
    with pytest.raises(UnsupportedMediaType):
        extract(buffer.getvalue(), "archive.bin2")


@pytest.mark.parametrize("data,name", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "image.png"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "sneaky.txt"),
    (b"\x7fELF\x02\x01\x01" + b"\x00" * 50, "prog"),
    (bytes(range(256)) * 4, "blob.dat"),
    (b"hello", "sheet.xlsx"),
])
def test_binary_and_unsupported_are_415(data, name):
    with pytest.raises(UnsupportedMediaType) as err:
        extract(data, name)
    assert err.value.status == 415 and err.value.detail


@pytest.mark.parametrize("data", [b"", b"   \n\t  "])
def test_empty_is_400_with_open_webui_message(data):
    with pytest.raises(BadRequest) as err:
        extract(data, "empty.txt")
    assert err.value.detail == EMPTY_CONTENT


def test_damaged_docx_is_400_not_500():
    data = make_docx("T", ["body"])
    damaged = data.replace(b"word/document.xml", b"word/documenX.xml", 1)
    with pytest.raises((BadRequest, UnsupportedMediaType)):
        extract(damaged, "broken.docx")
    with pytest.raises(BadRequest):
        extract(data[: len(data) // 2], "truncated.docx")


DOCUMENT_HEAD = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                 b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
                 b'<w:body>')
DOCUMENT_TAIL = b"</w:body></w:document>"


def raw_docx(pieces, repeat: int = 1) -> bytes:
    """A DOCX whose word/document.xml is the body `pieces` written `repeat` times, streamed into the ZIP:
    how a hostile client builds one (python-docx itself needs seconds for 16,000 paragraphs)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/document.xml", "w", force_zip64=True) as xml:
            xml.write(DOCUMENT_HEAD)
            for _ in range(repeat):
                xml.write(pieces)
            xml.write(DOCUMENT_TAIL)
    return buffer.getvalue()


def test_docx_of_16000_one_word_paragraphs_extracts_every_paragraph():
    """python-docx took 27-131 s here (it resolved every paragraph's style from the whole styles part); the
    streaming walk's time is measured by bench/extract_limits.py, not here."""
    data = raw_docx(b"<w:p><w:r><w:t>word</w:t></w:r></w:p>" * 16_000)
    assert len(data) < 40_000
    assert extract(data, "many.docx").text == "\n\n".join(["word"] * 16_000)


def test_docx_that_unpacks_to_more_text_than_the_limit_is_413():
    """A zip bomb of text (64 MB of paragraphs from < 0.5 MB): stopped as soon as the budget is spent,
    not read to the end."""
    data = raw_docx(b"<w:p><w:r><w:t>zephyr launch notes</w:t></w:r></w:p>" * 2**15, repeat=36)
    assert len(data) < 512 * 1024
    with pytest.raises(PayloadTooLarge) as err:
        extract(data, "bomb.docx", max_chars=1_000_000)
    assert err.value.status == 413
    assert "1,000,000 characters" in err.value.detail and "RAG_MAX_EXTRACTED_CHARS" in err.value.detail


def test_docx_of_countless_empty_paragraphs_meets_the_limit_too():
    data = raw_docx(b"<w:p/>" * 2**16, repeat=32)  # 2 M paragraphs, no text at all
    with pytest.raises(PayloadTooLarge) as err:
        extract(data, "empty-bomb.docx", max_chars=1_000_000)
    assert "1,000,000 characters" in err.value.detail


def directory_claims(data: bytes, size: int) -> bytes:
    """`data` (a one-member ZIP) with its central directory claiming `size` unpacked bytes for the member."""
    at = data.index(b"PK\x01\x02") + 24
    return data[:at] + struct.pack("<I", size) + data[at + 4:]


def test_docx_whose_directory_claims_more_than_256_mb_is_refused_before_unpacking():
    data = directory_claims(raw_docx(b"<w:p><w:r><w:t>x</w:t></w:r></w:p>"), 300 * 2**20)
    with pytest.raises(BadRequest) as err:
        extract(data, "huge.docx")
    assert "256 MB" in err.value.detail


def test_docx_whose_directory_understates_its_size_is_refused():
    data = directory_claims(raw_docx(b"<w:p><w:r><w:t>understated</w:t></w:r></w:p>" * 100), 64)
    with pytest.raises(BadRequest) as err:
        extract(data, "liar.docx")
    assert "could not be read as a DOCX" in err.value.detail


@pytest.mark.parametrize("data,name", [
    (b"word " * 300, "plain.txt"),
    (b"name,city\n" + b"Ada,London\n" * 60, "people.csv"),  # labels make CSV text longer than the file
    (b"<p>" + b"word " * 300 + b"</p>", "page.html"),
])
def test_every_format_is_held_to_the_extracted_text_limit(data, name):
    assert extract(data, name, max_chars=2_000).text
    with pytest.raises(PayloadTooLarge) as err:
        extract(data, name, max_chars=1_000)
    assert err.value.status == 413 and "1,000 characters" in err.value.detail


def test_pdf_is_held_to_the_extracted_text_limit():
    data = make_pdf(["Alpha page one " * 5] * 20)
    with pytest.raises(PayloadTooLarge):
        extract(data, "long.pdf", max_chars=500)


def test_pdf_and_docx_parsers_run_in_a_child_stopped_at_its_cpu_limit(monkeypatch):
    """The parsers of compressed formats run in a child process with CPU and memory rlimits: a file that
    keeps the parser busy past the CPU limit costs that limit, then a 413, and the caller goes on."""
    import webui_api.rag.extract as extract_module

    monkeypatch.setattr(extract_module, "SANDBOX_CPU_SECONDS", 1)
    data = raw_docx(b"<w:p><w:r><w:t>zephyr launch notes</w:t></w:r></w:p>" * 2**15, repeat=36)
    with pytest.raises(PayloadTooLarge) as err:
        extract(data, "busy.docx", max_chars=None)  # no text budget: only the CPU limit stops it
    assert "1 s of CPU" in err.value.detail
    assert extract(make_docx("Still", ["fine"]), "after.docx").text == "# Still\n\nfine"


def test_docx_swelling_past_the_memory_limit_is_refused(monkeypatch):
    """One paragraph of 3 million runs: its tree outgrows the child's address-space limit."""
    import webui_api.rag.extract as extract_module

    monkeypatch.setattr(extract_module, "SANDBOX_MEMORY_BYTES", 300 * 2**20)
    data = raw_docx(b"<w:p>" + b"<w:r><w:t>x</w:t></w:r>" * 3 * 2**20 + b"</w:p>")
    with pytest.raises((PayloadTooLarge, BadRequest)) as err:
        extract(data, "swollen.docx", max_chars=None)
    assert err.value.status in (400, 413)
