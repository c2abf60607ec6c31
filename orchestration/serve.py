"""``lgsid serve``: a small read-only HTTP service over an export (or a home), on FastAPI + uvicorn.

Endpoints (all GET, JSON):

- ``/healthz``: status, item and cached-user counts, codebook version;
- ``/items/{item_id}``: the item's SID under every method, its codebook and embedding versions,
  city, name and coordinates;
- ``/sids/{prefix}`` (e.g. ``/sids/12/7?method=lgsid&limit=50``): the items behind a prefix;
- ``/users/{user_id}/topk`` (``?k=10``): the cached recommendations.

Unknown ids are 404 with ``{"detail": "..."}`` naming what was not found; a bad prefix or an
unknown method is 400. Every answer comes from an in-memory :class:`ServingIndex` built at
start-up, so no request touches the file system: a hostile id (``..``, ``%2F``, NUL, 10 kB)
is just a key that is not there. The service binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Query

from lgsid_pipeline.serving.index import ServingError, ServingIndex

MAX_ID_CHARS = 512


def create_app(index: ServingIndex) -> FastAPI:
    app = FastAPI(title="lgsid SIDs", version="1", docs_url="/docs", redoc_url=None,
                  description="Read-only lookups of geography-aware semantic IDs and cached recommendations.")

    def _known(kind: str, key: str) -> None:
        if len(key) > MAX_ID_CHARS:
            raise HTTPException(404, f"unknown {kind}: the id is longer than {MAX_ID_CHARS} characters")

    @app.get("/healthz")
    def healthz() -> dict:
        return index.health()

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict:
        _known("item", item_id)
        found = index.item(item_id)
        if found is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return found

    @app.get("/sids/{prefix:path}")
    def sids(prefix: str, method: str | None = None, limit: int = Query(100, ge=1, le=10_000)) -> dict:
        try:
            return index.prefix(prefix, method=method, limit=limit)
        except ServingError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/users/{user_id}/topk")
    def topk(user_id: str, k: int = Query(10, ge=1, le=1000)) -> dict:
        _known("user", user_id)
        rows = index.user_topk(user_id)
        if rows is None:
            raise HTTPException(404, f"user {user_id!r} is not in the serving cache")
        return {"user_id": user_id, "items": rows[:k]}

    return app


def run(index: ServingIndex, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(index), host=host, port=port, log_level=log_level)
