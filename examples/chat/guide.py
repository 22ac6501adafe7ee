"""The guide's "Chat Room with Pub/Sub": every client in ``/chat/<room>`` sees every message.

Run (also reachable as ``examples.chat:application``)::

    python -m hornbeam_trio examples.chat.guide:application

then connect clients to ``ws://127.0.0.1:8000/chat/lobby`` and send
``{"user": "ann", "text": "hi"}``; everyone in ``lobby`` receives
``{"type": "message", "user": "ann", "text": "hi"}`` and nobody in another room does.

Changed from the guide, and why:

* The guide's loop ends with a ``check_pubsub()`` placeholder that would poll for
  published messages after each client message.  In Hornbeam, and here, there is
  nothing to poll: ``subscribe(topic)`` makes the *server* push every message
  published to the topic to this client (a dict as a JSON text frame), from the
  connection's own send path.  So the placeholder and its ``send`` are gone, and a
  client that only listens still receives everything.
* ``import asyncio`` is dropped: the guide imports it for tasks it never creates.
  (The Trio-native alternative to the push, ``async with
  hornbeam_trio.subscription(topic) as messages: async for m in messages``, is what
  you would use to transform messages before sending them yourself.)
* ``unsubscribe(topic)`` in ``finally`` is kept as the guide has it; the server would
  drop the subscription with the connection anyway.

For rooms with names, a user list and history, see ``examples/chat/app.py``.
"""

import json

from hornbeam_erlang import publish, subscribe, unsubscribe


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        await send({'type': 'websocket.accept'})

        # Get room from path: /chat/room-name
        path = scope.get('path', '/chat/default')
        room = path.split('/')[-1] or 'default'
        topic = f'chat:{room}'

        # Subscribe to room: from now on the server pushes the room's messages to us.
        subscribe(topic)

        try:
            await handle_chat(scope, receive, send, topic)
        finally:
            unsubscribe(topic)


async def handle_chat(scope, receive, send, topic):
    while True:
        message = await receive()

        if message['type'] == 'websocket.disconnect':
            break

        if message['type'] == 'websocket.receive':
            text = message.get('text', '')
            data = json.loads(text)

            # Broadcast to all subscribers (including this client)
            publish(topic, {
                'type': 'message',
                'user': data.get('user', 'anonymous'),
                'text': data.get('text', '')
            })

        # The guide's `check_pubsub()` is not needed: published messages are pushed
        # to this client by the server as they arrive.
