"""How long hostile documents hold a worker: extraction time of the DOCX/text bombs the hardening audit used.

    .venv/bin/python bench/extract_limits.py [--repeat 5]

Prints the median wall time per case over `--repeat` runs (each PDF/DOCX extraction includes the sandboxed
child's start-up). Before the streaming DOCX walk, 16,000 one-word paragraphs took 27-131 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_extract import raw_docx  # noqa: E402  (the hostile documents the tests build)
from webui_api.errors import ApiError  # noqa: E402
from webui_api.rag.extract import extract  # noqa: E402

CASES = [
    ("16,000 one-word paragraphs", lambda: raw_docx(b"<w:p><w:r><w:t>word</w:t></w:r></w:p>" * 16_000),
     None),
    ("text bomb, 64 MB unpacked, 1 M-char limit",
     lambda: raw_docx(b"<w:p><w:r><w:t>zephyr launch notes</w:t></w:r></w:p>" * 2**15, repeat=36), 1_000_000),
    ("2 M empty paragraphs, 1 M-char limit", lambda: raw_docx(b"<w:p/>" * 2**16, repeat=32), 1_000_000),
]


def run(data: bytes, limit) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        kwargs = {"max_chars": limit} if limit else {}
        outcome = f"{len(extract(data, 'bench.docx', **kwargs).text):,} chars"
    except ApiError as exc:
        outcome = f"{exc.status}"
    return time.perf_counter() - started, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"| case | file bytes | outcome | median ms (n={args.repeat}) |\n|---|---|---|---|")
    for name, build, limit in CASES:
        data = build()
        timings = [run(data, limit) for _ in range(args.repeat)]
        median = statistics.median(t for t, _ in timings) * 1000
        print(f"| {name} | {len(data):,} | {timings[0][1]} | {median:.0f} |")


if __name__ == "__main__":
    main()
