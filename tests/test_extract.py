"""Extraction for every supported type, and clear refusals for the rest."""
from __future__ import annotations

import io
import json
import zipfile

import pytest

from webui_api.errors import EMPTY_CONTENT, BadRequest, UnsupportedMediaType
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
