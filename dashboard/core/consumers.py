"""Websockets: one consumer per socket kind, each joined to its Channels group."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from dashboard.core.models import Job, Run

# Close codes in the 4000 range are ours: the page shows why instead of reconnecting forever.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class _GroupConsumer(AsyncJsonWebsocketConsumer):
    """Joins the group of one object the user may see; relays `broadcast` messages."""

    model: type[Run] | type[Job]
    url_kwarg: str
    group_name: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        object_id = self.scope["url_route"]["kwargs"][self.url_kwarg]
        if not await self._visible(user, object_id):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group_name = f"{self.model.__name__.lower()}.{object_id}"
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group_name:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def broadcast(self, event: dict[str, Any]) -> None:
        await self.send_json({"kind": event["kind"], "data": event["data"]})

    @database_sync_to_async
    def _visible(self, user: Any, object_id: int) -> bool:
        return self.model.objects.filter(pk=object_id, project__membership__user=user).exists()


class RunConsumer(_GroupConsumer):
    """`/ws/runs/<id>/`: new points, status changes and job progress of one run."""

    model = Run
    url_kwarg = "run_id"


class JobConsumer(_GroupConsumer):
    """`/ws/jobs/<id>/`: progress and status of one job."""

    model = Job
    url_kwarg = "job_id"
