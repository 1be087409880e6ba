"""Chunking: sizes, overlap, structure-first splitting and exact offsets."""
from __future__ import annotations

import random

import pytest

from webui_api.rag.chunk import split_text


def check_offsets(text, pieces, size):
    for piece in pieces:
        assert text[piece.start:piece.end] == piece.text
        assert 0 < len(piece.text) <= size
        assert piece.text == piece.text.strip()


def test_short_text_is_one_chunk():
    pieces = split_text("  Hello world.  ", 1000, 100)
    assert [(p.text, p.start, p.end) for p in pieces] == [("Hello world.", 2, 14)]


def test_empty_or_blank_text_gives_no_chunks():
    assert split_text("", 100, 10) == [] and split_text(" \n\n \t", 100, 10) == []


def test_paragraphs_are_preferred_over_sentences():
    para1 = "First paragraph sentence one. Sentence two is here."
    para2 = "Second paragraph stands alone and is fairly short."
    text = f"{para1}\n\n{para2}"
    pieces = split_text(text, 60, 0)
    assert [p.text for p in pieces] == [para1, para2]


def test_long_paragraph_splits_at_sentences():
    sentences = [f"Sentence number {i} talks about topic {i}." for i in range(10)]
    text = " ".join(sentences)
    pieces = split_text(text, 100, 0)
    check_offsets(text, pieces, 100)
    assert all(p.text.endswith(".") for p in pieces)


def test_markdown_headings_start_new_chunks_but_not_in_code_or_when_disabled():
    text = "# One\nalpha beta\n\n```\n# comment inside a fence\n```\n## Two\ngamma"
    pieces = split_text(text, 1000, 100)
    assert [p.text.split("\n")[0] for p in pieces] == ["# One", "## Two"]
    assert len(split_text(text, 1000, 100, markdown=False)) == 1


def test_overlap_repeats_the_tail_of_the_previous_chunk():
    text = " ".join(f"w{i:04d}" for i in range(400))
    pieces = split_text(text, 200, 50)
    check_offsets(text, pieces, 200)
    for prev, cur in zip(pieces, pieces[1:]):
        assert cur.start < prev.end  # overlapping
        assert prev.end - cur.start <= 50
    assert pieces[0].start == 0 and pieces[-1].end == len(text)


def test_unbreakable_text_is_cut_by_characters():
    text = "x" * 2500
    pieces = split_text(text, 1000, 100)
    check_offsets(text, pieces, 1000)
    assert sum(len(p.text) for p in pieces) >= 2500


@pytest.mark.parametrize("seed", range(5))
def test_random_text_covers_everything_with_exact_offsets(seed):
    rng = random.Random(seed)
    words = ["alpha", "beta.", "gamma,", "delta!", "\n", "\n\n", "# Head", "eps", "zeta?", "x" * 40]
    text = " ".join(rng.choice(words) for _ in range(3000))
    size, overlap = rng.choice([(100, 20), (300, 50), (1000, 100)])
    pieces = split_text(text, size, overlap)
    check_offsets(text, pieces, size)
    covered = set()
    for piece in pieces:
        covered.update(range(piece.start, piece.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_overlap_not_smaller_than_size_still_progresses():
    text = " ".join(["word"] * 100)
    pieces = split_text(text, 20, 50)
    check_offsets(text, pieces, 20)
    assert pieces[-1].end == len(text)
