"""The per-app objects every request shares: built once in create_app, replaceable by tests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Settings

if TYPE_CHECKING:  # the real imports happen in build_services, when the app is built
    from .gateway.catalog import Catalog
    from .gateway.pipes import Pipes
    from .gateway.readiness import ReportCache
    from .rag.embed import Embedder
    from .rag.jobs import Jobs
    from .rag.vectors import VectorStore
    from .upstream import Upstream


@dataclass
class Services:
    settings: Settings
    upstream: Upstream
    catalog: Catalog
    vectors: VectorStore
    embedder: Embedder
    jobs: Jobs
    readiness: ReportCache
    pipes: Pipes

    def close(self) -> None:
        self.jobs.close()
        self.upstream.close()


def build_services(settings: Settings, **given: Any) -> Services:
    """Construct whatever the caller did not hand in. Constructors are cheap and never touch the network."""
    from .rag.embed import Embedder
    from .rag.jobs import Jobs
    from .rag.vectors import VectorStore
    from .gateway.catalog import Catalog
    from .gateway.pipes import Pipes
    from .gateway.readiness import ReportCache
    from .upstream import Upstream

    upstream = given.get("upstream") or Upstream(settings)
    pipes = given.get("pipes") or Pipes(settings, upstream)  # imports PIPES_DIR's files: start-up only
    return Services(
        settings=settings,
        upstream=upstream,
        catalog=given.get("catalog") or Catalog(settings, upstream, pipes),
        vectors=given.get("vectors") or VectorStore(os.path.join(settings.DATA_DIR, "vector_db"),
                                                       cached_collections=settings.RAG_CACHED_COLLECTIONS),
        embedder=given.get("embedder") or Embedder(settings, upstream),
        jobs=given.get("jobs") or Jobs(),
        readiness=ReportCache(),
        pipes=pipes,
    )
