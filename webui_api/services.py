"""The per-app objects every request shares: built once in create_app, replaceable by tests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .config import Settings


@dataclass
class Extensions:
    settings: Settings
    upstream: Any = None
    registry: Any = None
    vectors: Any = None
    embedder: Any = None
    jobs: Any = None

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.close()
        if self.upstream is not None:
            self.upstream.close()


def build_extensions(settings: Settings, **given: Any) -> Extensions:
    """Construct whatever the caller did not hand in. Constructors are cheap and never touch the network."""
    from .rag.embed import Embedder
    from .rag.jobs import Jobs
    from .rag.vectors import VectorStore
    from .gateway.registry import Registry
    from .upstream import Upstream

    upstream = given.get("upstream") or Upstream(settings)
    return Extensions(
        settings=settings,
        upstream=upstream,
        registry=given.get("registry") or Registry(settings, upstream),
        vectors=given.get("vectors") or VectorStore(os.path.join(settings.DATA_DIR, "vector_db")),
        embedder=given.get("embedder") or Embedder(settings, upstream),
        jobs=given.get("jobs") or Jobs(),
    )
