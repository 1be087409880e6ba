"""The lexical (BM25) index of chunk text: SQLite FTS5 written by the chunk triggers, or PostgreSQL's
generated tsvector column with BM25 computed in SQL."""
from __future__ import annotations

import json
import re

import peewee

from .. import db
from ..errors import ConfigError

_WORD = re.compile(r"\w+", re.UNICODE)
# Words that match nearly every passage: they cost time and add noise to the ranking, never recall.
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves""".split())


def match_expression(query: str) -> str | None:
    """The user's words as an FTS5 OR-query of quoted terms (no operators of theirs get through)."""
    words = [w for w in dict.fromkeys(_WORD.findall(query.lower())) if w not in STOPWORDS]
    return " OR ".join(f'"{w}"' for w in words) or None


def search(query: str, file_ids, limit: int) -> list[tuple[int, str, float]]:
    """Best `limit` (chunk id, file id, BM25 score) among the chunks of `file_ids`; higher scores are better.
    BM25 is computed once per match before the join: asking FTS5 for given rowids re-runs the query
    per row."""
    expression = match_expression(query)
    if expression is None or limit < 1:
        return []
    if db.dialect.name == "postgres":
        return _search_tsvector(expression, file_ids, limit)
    sql = (f"WITH m AS MATERIALIZED (SELECT rowid AS id, bm25({db.CHUNK_FTS}) AS rank FROM {db.CHUNK_FTS} "
           f"WHERE {db.CHUNK_FTS} MATCH ?) "
           "SELECT m.id, c.file_id, -m.rank FROM m JOIN chunk c ON c.id = m.id "
           "WHERE c.file_id IN (SELECT value FROM json_each(?)) ORDER BY m.rank LIMIT ?")
    return [tuple(row)
            for row in db.database.execute_sql(sql, (expression, json.dumps(list(file_ids)), limit))]


def _search_tsvector(expression: str, file_ids, limit: int) -> list[tuple[int, str, float]]:
    """PostgreSQL: the same OR-query of the same words, ranked by BM25 as FTS5 ranks (k1 = 1.2, b = 0.75;
    PostgreSQL's own ts_rank has no inverse document frequency, so a rare exact term lost to common words).
    Counts are taken within the searched files; document length is the number of distinct stems."""
    words = [word[1:-1] for word in expression.split(" OR ")]  # \w+ only: nothing to escape
    return [tuple(row) for row in db.execute(_BM25_SQL, (" | ".join(words), list(file_ids), " ".join(words),
                                                        list(file_ids), limit))]


_BM25_SQL = f"""
WITH matches AS (
  SELECT c.id, c.file_id, length(c.tsv) AS dl, u.lexeme, coalesce(cardinality(u.positions), 1) AS tf
  FROM chunk c, unnest(c.tsv) u
  WHERE c.tsv @@ to_tsquery('{db.PG_TEXT_SEARCH_CONFIG}', ?) AND c.file_id = ANY(?)
    AND u.lexeme = ANY(tsvector_to_array(to_tsvector('{db.PG_TEXT_SEARCH_CONFIG}', ?)))),
stats AS (SELECT (SELECT count(*) FROM chunk WHERE file_id = ANY(?)) AS n,
                 (SELECT avg(dl) FROM (SELECT DISTINCT id, dl FROM matches) d) AS avgdl),
df AS (SELECT lexeme, count(*) AS df FROM matches GROUP BY lexeme)
SELECT m.id, m.file_id, sum(greatest(ln((s.n - df.df + 0.5) / (df.df + 0.5)), 1e-6)
                            * m.tf * 2.2 / (m.tf + 1.2 * (0.25 + 0.75 * m.dl / s.avgdl)))::float8 AS score
FROM matches m JOIN df USING (lexeme), stats s
GROUP BY m.id, m.file_id ORDER BY score DESC LIMIT ?"""


def tokenizer() -> str | None:
    """The tokenizer the index was built with (None: no index; PostgreSQL: its text search config)."""
    if db.dialect.name == "postgres":
        return db.PG_TEXT_SEARCH_CONFIG
    row = db.database.execute_sql("SELECT sql FROM sqlite_master WHERE name = ?", (db.CHUNK_FTS,)).fetchone()
    found = re.search(r"tokenize='((?:[^']|'')*)'", row[0]) if row else None
    return found.group(1).replace("''", "'") if found else None


def use_tokenizer(wanted: str) -> bool:
    """Rebuild the index when RAG_BM25_TOKENIZER changed since it was built; True if it was rebuilt."""
    if tokenizer() == wanted or db.dialect.name == "postgres":  # PostgreSQL: one config, see db
        return False
    try:
        with db.write_transaction():
            if tokenizer() == wanted:  # another worker did it while we waited for the lock
                return False
            db.create_chunk_fts(db.database, wanted)
    except peewee.OperationalError as exc:  # rolled back: the old index stays
        raise ConfigError(f"RAG_BM25_TOKENIZER={wanted!r} is not an FTS5 tokenizer: {exc}") from None
    return True


def rebuild() -> None:
    """Re-index every chunk row from the `chunk` table (the truth); PostgreSQL's column needs none."""
    if db.dialect.name == "postgres":
        return
    with db.write_transaction():
        db.database.execute_sql(f"INSERT INTO {db.CHUNK_FTS}({db.CHUNK_FTS}) VALUES ('rebuild')")


def is_consistent() -> bool:
    """Whether the index matches the chunk rows exactly (FTS5's integrity check against its content);
    PostgreSQL's generated column is in step by construction."""
    if db.dialect.name == "postgres":
        return True
    try:
        db.database.execute_sql(f"INSERT INTO {db.CHUNK_FTS}({db.CHUNK_FTS}, rank) "
                                "VALUES ('integrity-check', 1)")
    except Exception as exc:  # SQLite reports a mismatch as a corrupt-database error
        if "malformed" in str(exc) or "corrupt" in str(exc):
            return False
        raise
    return True
