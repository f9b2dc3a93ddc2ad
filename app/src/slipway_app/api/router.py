"""All routers in one place; ``main.create_app`` includes ``api_router``."""

from fastapi import APIRouter

from slipway_app.api.routes import health, jobs, meta

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(meta.router)
api_router.include_router(jobs.router)
