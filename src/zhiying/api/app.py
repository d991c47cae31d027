"""The FastAPI app factory: one router per package, mounted here.

``create_app(stores)`` takes already opened stores so tests, the demo and
``zhiying serve`` build the same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

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


def _routers() -> list:  # type: ignore[type-arg]
    """Routers of every package that speaks HTTP; a package adds itself here."""
    routers = []
    import importlib

    for module in ROUTER_MODULES:
        try:
            routers.append(importlib.import_module(module).router)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return routers


ROUTER_MODULES = [
    "zhiying.ingest.api",
    "zhiying.profiles.api",
    "zhiying.profiles.tags.api",
    "zhiying.profiles.layers.api",
    "zhiying.segments.api",
    "zhiying.coupons.api",
]
