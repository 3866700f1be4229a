"""Websockets: one consumer per socket kind, each joined to its Channels group."""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from redis.exceptions import RedisError

from dashboard.core.models import Job, Project, Run

log = logging.getLogger(__name__)

# Close codes in the 4000 range are ours: the page shows why instead of reconnecting forever.
# A refusal is sent after accepting: one sent before reaches the browser as a bare HTTP 403.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
# The channel layer (Redis) is unreachable: the page retries with backoff. (Not 1013, the
# standard "try again later": servers may only send 1000 and 3000-4999.)
CLOSE_TRY_AGAIN = 4503


class _OneWayConsumer(AsyncJsonWebsocketConsumer):
    """The server talks, the page listens: frames from the client are ignored (a non-JSON
    frame must not close the socket with an internal error)."""

    accepted = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (OSError, RedisError):
            # The channel layer's Redis went away under this socket (its receive loop
            # failed): say "try again later" rather than an internal error with a traceback.
            log.warning("websocket closed: channel layer unreachable")
            if not self.accepted:
                await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN})

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None


class NotFoundConsumer(_OneWayConsumer):
    """Any other `/ws/...` path: 4404, as for an object the user may not see."""

    async def connect(self) -> None:
        await self.refuse(CLOSE_NOT_FOUND)


class _GroupConsumer(_OneWayConsumer):
    """Joins the group of one object the user may see; relays `broadcast` messages."""

    model: type[Run] | type[Job] | type[Project]
    url_kwarg: str
    member_lookup = "project__membership__user"
    group_name: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        object_id = self.scope["url_route"]["kwargs"][self.url_kwarg]
        if not await self._visible(user, object_id):
            await self.refuse(CLOSE_NOT_FOUND)
            return
        group_name = f"{self.model.__name__.lower()}.{object_id}"
        if not await self._join(group_name):
            await self.refuse(CLOSE_TRY_AGAIN)
            return
        self.group_name = group_name
        await self.accept()

    async def _join(self, group_name: str) -> bool:
        # After a Redis restart the layer's pool still holds a dead connection: the first
        # command fails and the next one gets a fresh connection, so try twice.
        for attempt in (1, 2):
            try:
                await self.channel_layer.group_add(group_name, self.channel_name)
                return True
            except (OSError, RedisError):
                log.warning("websocket: channel layer unreachable (try %d)", attempt)
        return False

    async def disconnect(self, code: int) -> None:
        if self.group_name:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def broadcast(self, event: dict[str, Any]) -> None:
        # Encoded once by the publisher (`live.publish`), relayed as is.
        await self.send(text_data=event["text"])

    @database_sync_to_async
    def _visible(self, user: Any, object_id: int) -> bool:
        return self.model.objects.filter(pk=object_id, **{self.member_lookup: user}).exists()


class RunConsumer(_GroupConsumer):
    """`/ws/runs/<id>/`: new points, status changes and job progress of one run."""

    model = Run
    url_kwarg = "run_id"


class JobConsumer(_GroupConsumer):
    """`/ws/jobs/<id>/`: progress and status of one job."""

    model = Job
    url_kwarg = "job_id"


class ProjectConsumer(_GroupConsumer):
    """`/ws/projects/<id>/`: "runs" when a run of the project starts, ends or fires (the runs
    list re-renders itself)."""

    model = Project
    url_kwarg = "project_id"
    member_lookup = "membership__user"
