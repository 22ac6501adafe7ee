"""Presence over Redis, against a real redis-server: several server processes, one room.

Members live in Redis (a hash per topic), so every process sees every member; each is
leased like a connection-owned key, so a process killed with SIGKILL loses its members
(and a leave event is published for each) once its lease runs out.  Without
redis-server these skip with the reason, or fail when HORNBEAM_CI is set.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from example_server import eventually, example_server, killable_server
from redis_server import RedisServer
from test_redis import façade_of, noop_app
from trio_websocket import open_websocket_url

from hornbeam_trio import SyncUnavailable, presence, presence_topic, state, subscription
from hornbeam_trio.testing import run_server

SPEC = "tests.apps.presence_app:app"
ROOM = "room:lobby"
LEASE = 1.0


async def member_of(ws: Any) -> str:
    """The member id the app announces (presence events pushed meanwhile are skipped)."""
    with trio.fail_after(5):
        while "member" not in (message := json.loads(await ws.get_message())):
            pass
    member: str = message["member"]
    return member


async def render_until(ws: Any, members: dict[str, Any], done: Any) -> dict[str, Any]:
    """What a browser does: apply each pushed presence event to its member list."""
    with trio.fail_after(5):
        while not done(members):
            event = json.loads(await ws.get_message())
            if event.get("type") == "presence.join":
                members[event["member"]] = event["info"]
            elif event.get("type") == "presence.leave":
                members.pop(event["member"], None)
    return members


async def test_two_server_processes_see_each_others_members_and_events(
    redis_url: str, redis: RedisServer
) -> None:
    flags = ("--backend", redis_url)
    async with (
        example_server(SPEC, *flags) as first,
        example_server(SPEC, *flags) as second,
        run_server(noop_app, backend=redis_url) as observer,
    ):
        with façade_of(observer):
            with pytest.raises(SyncUnavailable, match=r"await hornbeam_trio\.state\.presence"):
                presence(ROOM)

            async def members() -> dict[str, Any]:
                return await state.presence(ROOM)

            async with open_websocket_url(first.ws_url("/ann")) as ann:
                ann_id = await member_of(ann)
                async with open_websocket_url(second.ws_url("/bob")) as bob:
                    bob_id = await member_of(bob)
                    assert ann_id != bob_id
                    both = {
                        ann_id: {"name": "ann", "pid": first.process.pid},
                        bob_id: {"name": "bob", "pid": second.process.pid},
                    }
                    await eventually(members, lambda m: m == both, what="both members")
                    # ann's client, served by the first process, hears of bob's join on
                    # the second and renders the same list as presence() gives.
                    rendered: dict[str, Any] = {}
                    await render_until(ann, rendered, lambda m: len(m) == 2)
                    assert rendered == both
                # bob's connection ended on the second process: ann is told there
                await render_until(ann, rendered, lambda m: len(m) == 1)
                assert rendered == {ann_id: both[ann_id]}
                await eventually(members, lambda m: set(m) == {ann_id}, what="bob gone")
            await eventually(members, lambda m: m == {}, what="everyone gone")
    assert redis.command("KEYS", "hornbeam:presence:*") == []
    assert redis.command("KEYS", "hornbeam:owned:*") == []


async def test_the_members_of_a_killed_process_leave_within_its_lease(
    redis_url: str, redis: RedisServer
) -> None:
    url = f"{redis_url}?lease_ttl={LEASE:g}"
    async with run_server(noop_app, backend=url) as survivor:
        async with killable_server(SPEC, "--backend", url) as doomed:
            with façade_of(survivor):
                async with subscription(presence_topic(ROOM)) as events:
                    assert await state.presence(ROOM) == {}  # also: subscribed in Redis
                    async with open_websocket_url(doomed.ws_url("/ann")) as ann:
                        ann_id = await member_of(ann)
                        with trio.fail_after(5):
                            joined = await events.get()
                        info = {"name": "ann", "pid": doomed.process.pid}
                        assert joined == {
                            "type": "presence.join",
                            "topic": ROOM,
                            "member": ann_id,
                            "info": info,
                        }
                        assert await state.presence(ROOM) == {ann_id: info}
                        doomed.process.kill()  # no release, no goodbye
                        killed_at = trio.current_time()
                        await doomed.process.wait()
                        assert await state.presence(ROOM) == {ann_id: info}  # until the lease
                        # the lease runs out at most LEASE after its last refresh, and the
                        # survivor sweeps every LEASE / 3: the leave event, sent by the sweep
                        with trio.fail_after(LEASE + LEASE / 3 + 1.0):
                            left = await events.get()
                        assert trio.current_time() - killed_at <= LEASE + LEASE / 3 + 1.0
                        assert left == {"type": "presence.leave", "topic": ROOM, "member": ann_id}
                        assert await state.presence(ROOM) == {}
    assert redis.command("KEYS", "hornbeam:presence:*") == []
    assert redis.command("ZCARD", "hornbeam:leases") == 0
