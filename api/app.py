"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import conditional, docs, errors, headers, middleware, openapi
from api.limits import RATE_LIMITED
from api.routes import admin, deliveries, events, health, jobs, loras, models, openai_videos, workers
from core.contract.strategies import STRATEGIES

DESCRIPTION = f"""
Submit text-to-video jobs, follow them, fetch the MP4. Each job names a timestep-cache
strategy ({", ".join(f"`{name}`" for name in STRATEGIES)}) and reports what it saved.

Authenticate with `Authorization: Bearer <API key>` (create keys with `skipstep keys create`).
"""


def create_app() -> FastAPI:
    app = FastAPI(
        title="skipstep",
        version="0.1.0",
        description=DESCRIPTION,
        generate_unique_id_function=openapi.operation_id,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    conditional.install(app)
    middleware.install(app)
    headers.install(app)
    for router in (jobs.router, events.router, openai_videos.router, deliveries.router, models.router, workers.router):
        app.include_router(router, dependencies=RATE_LIMITED)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(loras.router)
    app.mount("/admin/static", StaticFiles(directory=admin.STATIC_DIR), name="admin-static")
    openapi.install(app)
    docs.install(app)
    return app


app = create_app()
