"""Typed dependencies: everything a route needs comes from ``app.state`` (set by lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from slipway_app.core.config import Settings
from slipway_app.core.migrate import ScriptGraph


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    maker: Any = request.app.state.sessionmaker
    async with maker() as session:
        yield session


def get_redis(request: Request) -> Redis:
    client: Redis = request.app.state.redis
    return client


def get_celery(request: Request) -> Celery:
    celery: Celery = request.app.state.celery
    return celery


def get_migration_graph(request: Request) -> ScriptGraph:
    graph: ScriptGraph = request.app.state.migration_graph
    return graph


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[Redis, Depends(get_redis)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
GraphDep = Annotated[ScriptGraph, Depends(get_migration_graph)]
