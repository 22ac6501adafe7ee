"""The README's "Testing your app" example, verbatim: it must stay true."""

import json

from hornbeam_erlang import publish, subscribe
from hornbeam_trio.testing import run_server


async def chat(scope, receive, send):  # type: ignore[no-untyped-def]  # the guide's chat room, minus polling
    await send({"type": "websocket.accept"})
    topic = "chat:" + scope["path"].rsplit("/", 1)[-1]
    subscribe(topic)  # the server pushes the room's messages
    while (message := await receive())["type"] == "websocket.receive":
        publish(topic, json.loads(message["text"]))


async def test_two_clients_in_one_room():  # type: ignore[no-untyped-def]
    async with run_server(chat) as server:
        async with server.websocket("/chat/lobby") as alice, server.websocket("/chat/lobby") as bob:
            await alice.send_json({"user": "alice", "text": "hi"})
            assert await bob.receive_json() == {"user": "alice", "text": "hi"}
