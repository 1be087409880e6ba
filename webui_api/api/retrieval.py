"""/api/v1/retrieval: query collections directly, and (re-)process files and text."""
from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..rag import knowledge, retrieve, settings_view
from .deps import access, current_user, ext
from .json_input import Blueprint
from .schemas import Schema, StatusSchema, derived

blp = Blueprint("retrieval", __name__, url_prefix="/api/v1/retrieval", description="Retrieval and processing")


class RankingSchema(Schema):
    """Open WebUI's per-request ranking options (defaults: the RAG_* settings)."""

    k_reranker = ma.fields.Integer(load_default=None, allow_none=True,
                                   metadata={"description": "Results kept after reranking (hybrid)"})
    r = ma.fields.Float(load_default=None, allow_none=True,
                        metadata={"description": "Relevance threshold in [0, 1] on the reported score"})
    hybrid = ma.fields.Boolean(load_default=None, allow_none=True,
                               metadata={"description": "Fuse vector and BM25 search"})
    hybrid_bm25_weight = ma.fields.Float(
        load_default=None, allow_none=True,
        metadata={"description": "BM25's share in [0, 1] of the fused score"})


class QueryDocSchema(RankingSchema):
    collection_name = ma.fields.String(required=True,
                                       metadata={"description": "`file-<id>` or a knowledge id"})
    query = ma.fields.String(required=True)
    k = ma.fields.Integer(load_default=None, allow_none=True)


class QueryCollectionSchema(RankingSchema):
    collection_names = ma.fields.List(ma.fields.String(), required=True, validate=ma.validate.Length(min=1))
    query = ma.fields.String(required=True)
    k = ma.fields.Integer(load_default=None, allow_none=True)


class ProcessFileSchema(Schema):
    file_id = ma.fields.String(required=True)
    content = ma.fields.String(load_default=None, allow_none=True,
                               metadata={"description": "Replacement text (else the stored bytes are "
                                                        "read again)"})
    collection_name = ma.fields.String(load_default=None, allow_none=True,
                                       metadata={"description": "Also add the file to this knowledge "
                                                                "collection"})


class ProcessTextSchema(Schema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1))
    content = ma.fields.String(required=True)
    collection_name = ma.fields.String(load_default=None, allow_none=True)


def _one_query(field: ma.fields.Field, of_hit) -> ma.fields.Field:
    """A Chroma column: one inner list (one query), a value per hit, best first."""
    return derived(ma.fields.List(ma.fields.List(field)), lambda ranked: [[of_hit(h) for h in ranked.hits]])


def _as_stored(metadata: dict) -> dict:
    """A chunk's metadata as Open WebUI's vector store hands it back: `embedding_config` is the text of the
    dict it stored (Python's repr, as recorded from Open WebUI), not an object."""
    config = metadata.get("embedding_config")
    return {**metadata, "embedding_config": str(config)} if isinstance(config, dict) else metadata


class QueryResultSchema(Schema):
    """Chroma's query shape: one inner list, best match first; ids are strings, as Chroma returns them."""

    ids = _one_query(ma.fields.String(), lambda hit: str(hit.chunk.id))
    distances = _one_query(ma.fields.Float(), lambda hit: round(hit.score, 6))
    documents = _one_query(ma.fields.String(), lambda hit: hit.chunk.text)
    metadatas = derived(ma.fields.List(ma.fields.List(ma.fields.Dict(), metadata={
        "description": "Per hit; `embedding_config` is a string, as Open WebUI returns it"})),
        lambda ranked: [[_as_stored(m) for m in ranked.metadatas]])


class DeleteSchema(Schema):
    collection_name = ma.fields.String(required=True, validate=ma.validate.Length(min=1),
                                       metadata={"description": "A knowledge collection id"})
    file_id = ma.fields.String(required=True, validate=ma.validate.Length(min=1))


class BackendConfigSchema(Schema):
    url = ma.fields.String()
    key = ma.fields.String(metadata={"description": "Masked"})
    version = ma.fields.String()


class EmbeddingConfigSchema(Schema):
    """Open WebUI's embedding settings, read from the environment (RAG_*); keys masked."""

    status = ma.fields.Boolean()
    RAG_EMBEDDING_ENGINE = ma.fields.String()
    RAG_EMBEDDING_MODEL = ma.fields.String()
    RAG_EMBEDDING_BATCH_SIZE = ma.fields.Integer()
    ENABLE_ASYNC_EMBEDDING = ma.fields.Boolean()
    RAG_EMBEDDING_CONCURRENT_REQUESTS = ma.fields.Integer()
    openai_config = ma.fields.Nested(BackendConfigSchema)
    ollama_config = ma.fields.Nested(BackendConfigSchema)
    azure_openai_config = ma.fields.Nested(BackendConfigSchema)


class RetrievalConfigSchema(Schema):
    """Open WebUI's retrieval settings that exist here, read from the environment; keys masked."""

    status = ma.fields.Boolean()
    RAG_TEMPLATE = ma.fields.String()
    TOP_K = ma.fields.Integer()
    BYPASS_EMBEDDING_AND_RETRIEVAL = ma.fields.Boolean()
    RAG_FULL_CONTEXT = ma.fields.Boolean()
    ENABLE_RAG_HYBRID_SEARCH = ma.fields.Boolean()
    TOP_K_RERANKER = ma.fields.Integer()
    RELEVANCE_THRESHOLD = ma.fields.Float()
    HYBRID_BM25_WEIGHT = ma.fields.Float()
    RAG_RERANKING_ENGINE = ma.fields.String()
    RAG_RERANKING_MODEL = ma.fields.String()
    RAG_EXTERNAL_RERANKER_URL = ma.fields.String()
    RAG_EXTERNAL_RERANKER_API_KEY = ma.fields.String()
    CONTENT_EXTRACTION_ENGINE = ma.fields.String()
    TEXT_SPLITTER = ma.fields.String()
    ENABLE_MARKDOWN_HEADER_TEXT_SPLITTER = ma.fields.Boolean()
    CHUNK_SIZE = ma.fields.Integer()
    CHUNK_OVERLAP = ma.fields.Integer()
    FILE_MAX_SIZE = ma.fields.Float(allow_none=True, metadata={"description": "MB; null: no limit"})
    FILE_MAX_COUNT = ma.fields.Integer(allow_none=True)
    ALLOWED_FILE_EXTENSIONS = ma.fields.List(ma.fields.String())


class ProcessedSchema(Schema):
    """A file made searchable, and the collection it is searchable in."""

    status = ma.fields.Constant(True, metadata={"type": "boolean"})
    collection_name = ma.fields.String()
    filename = ma.fields.String(attribute="file.filename")
    content = ma.fields.String(attribute="file.content", allow_none=True)


class ProcessedTextSchema(Schema):
    status = ma.fields.Constant(True, metadata={"type": "boolean"})
    collection_name = ma.fields.String()
    file_id = ma.fields.String(attribute="file.id")
    filename = ma.fields.String(attribute="file.filename")
    content = ma.fields.String(attribute="file.content", allow_none=True)


_RANKING_FIELDS = tuple(RankingSchema().fields)


def _ranking(body: dict) -> dict:
    return {name: body[name] for name in _RANKING_FIELDS}


@blp.route("/query/doc")
class QueryDoc(MethodView):
    @blp.arguments(QueryDocSchema)
    @blp.response(200, QueryResultSchema)
    def post(self, body):
        """Top `k` chunks of one collection: `{ids, documents, metadatas, distances}` (lists of lists)."""
        return retrieve.query_collections(ext(), current_user(), [body["collection_name"]], body["query"],
                                          body["k"], **_ranking(body))


@blp.route("/query/collection")
class QueryCollection(MethodView):
    @blp.arguments(QueryCollectionSchema)
    @blp.response(200, QueryResultSchema)
    def post(self, body):
        """Top `k` chunks over several collections, merged and ranked by similarity."""
        return retrieve.query_collections(ext(), current_user(), body["collection_names"], body["query"],
                                          body["k"], **_ranking(body))


@blp.route("/process/file")
class ProcessFile(MethodView):
    @blp.arguments(ProcessFileSchema)
    @blp.response(200, ProcessedSchema)
    def post(self, body):
        """(Re-)process a file, e.g. after the embedding backend failed; answers when it is searchable."""
        return knowledge.process_again(ext(), current_user(), body["file_id"], body["content"],
                                       body["collection_name"])


@blp.route("/process/text")
class ProcessText(MethodView):
    @blp.arguments(ProcessTextSchema)
    @blp.response(200, ProcessedTextSchema)
    def post(self, body):
        """Store text as a new file and make it searchable (optionally inside a knowledge collection)."""
        return knowledge.create_from_text(ext(), current_user(), body["name"], body["content"],
                                          body["collection_name"])


@blp.route("/delete")
class DeleteFromCollection(MethodView):
    @blp.arguments(DeleteSchema)
    @blp.response(200, StatusSchema)
    def post(self, body):
        """Remove a file's vectors from a knowledge collection, i.e. take the file out of it (the file is
        kept; owner or admin of the collection). `{"status": false}` when the file was not in it."""
        return {"status": knowledge.delete_from_collection(ext(), current_user(), body["collection_name"],
                                                           body["file_id"])}


@blp.route("/config")
class RetrievalConfig(MethodView):
    @access("admin")
    @blp.response(200, RetrievalConfigSchema)
    def get(self):
        """The retrieval settings in force (read-only: they come from the environment here)."""
        return settings_view.retrieval_view(ext().settings)


@blp.route("/embedding")
class EmbeddingConfig(MethodView):
    @access("admin")
    @blp.response(200, EmbeddingConfigSchema)
    def get(self):
        """The embedding engine and model in force (read-only: they come from the environment here)."""
        return settings_view.embedding_view(ext().settings, ext().embedder)
