"""The FastAPI app factory: one router per package, mounted here.

``create_app(stores)`` takes already opened stores so tests, the demo and
``zhiying serve`` build the same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from zhiying.api import problems
from zhiying.runtime import Stores


def create_app(stores: Stores) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Ingestion's group-commit writer: one thread stores what /v1 requests queue.
        from zhiying.ingest.writer import EventWriter

        app.state.event_writer = EventWriter(stores)
        app.state.event_writer.start()
        try:
            yield
        finally:
            app.state.event_writer.stop()
            app.state.event_writer = None

    app = FastAPI(
        title="Zhiying (智营)",
        version="0.1.0",
        description="Closed-loop marketing operations: Segment-compatible ingestion, ONE_ID, "
        "profiles, segments, coupons, journeys.",
        lifespan=lifespan,
    )
    app.state.stores = stores
    problems.install(app)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    for router in _routers():
        app.include_router(router)
    return app


def _routers() -> list[APIRouter]:
    """Routers of every package that speaks HTTP; a package adds itself here."""
    from zhiying.coupons import api as coupons
    from zhiying.ingest import api as ingest
    from zhiying.profiles import api as profiles
    from zhiying.profiles.layers import api as layers
    from zhiying.profiles.tags import api as tags
    from zhiying.segments import api as segments

    return [
        ingest.router,
        ingest.admin_router,
        profiles.router,
        tags.router,
        layers.router,
        segments.router,
        coupons.router,
    ]
