"""The guide's "Connection with ETS State": each WebSocket client is registered in the
shared state while it is connected, and counted in ``ws:active_connections``.

Run::

    python -m hornbeam_trio examples.ets_state:application

then ``curl http://127.0.0.1:8000/stats`` shows the counter and the registered clients.

Changed from the guide, and why:

* ``import time`` is added: the guide calls ``time.time()`` without importing it.
* ``handle_connection`` fills in the guide's "Handle messages..." by answering every
  message with this client's id and the current counter, so a client can see that it
  is registered.
* ``GET /stats`` (plain HTTP on the same app) returns ``{"active_connections": n,
  "clients": {id: {...}}}`` from ``state_get``/``state_keys``, so the bookkeeping can
  be watched from outside.  The guide's app ignores HTTP.

The Hornbeam calls are the guide's, unchanged.  The ``finally`` block runs on every
way a connection can end under Trio (client close, abrupt disconnect, cancellation
at server shutdown), and ``state_delete``/``state_incr`` are synchronous, so the
clean-up cannot be interrupted.  hornbeam_trio also offers ``state_set(key, value,
owned=True)`` and ``state_incr(key, owned=True)``, which the server undoes when the
connection ends, with no ``finally`` needed (see ``examples/chat/app.py``).
"""

import json
import time
import uuid

from hornbeam_erlang import state_delete, state_get, state_incr, state_keys, state_set


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        # Generate unique client ID
        client_id = str(uuid.uuid4())

        await send({'type': 'websocket.accept'})

        # Register client
        state_set(f'ws:client:{client_id}', {
            'connected_at': time.time(),
            'path': scope.get('path', '/')
        })
        state_incr('ws:active_connections')

        try:
            await handle_connection(scope, receive, send, client_id)
        finally:
            # Cleanup on disconnect
            state_delete(f'ws:client:{client_id}')
            state_incr('ws:active_connections', -1)
    elif scope['type'] == 'http':
        await stats_endpoint(scope, receive, send)


async def handle_connection(scope, receive, send, client_id):
    while True:
        message = await receive()
        if message['type'] == 'websocket.disconnect':
            break
        # Handle messages: tell the client who it is and how many are connected.
        await send({
            'type': 'websocket.send',
            'text': json.dumps({
                'client_id': client_id,
                'active_connections': state_get('ws:active_connections'),
            }),
        })


async def stats_endpoint(scope, receive, send):
    """``GET /stats``: the counter and the registered clients, as JSON; 404 elsewhere."""
    if scope['path'] != '/stats':
        await respond(send, 404, {'error': 'not found'})
        return
    prefix = 'ws:client:'
    clients = {key[len(prefix):]: state_get(key) for key in state_keys(prefix)}
    await respond(send, 200, {
        'active_connections': state_get('ws:active_connections') or 0,
        'clients': clients,
    })


async def respond(send, status, value):
    body = json.dumps(value).encode()
    await send({
        'type': 'http.response.start',
        'status': status,
        'headers': [(b'content-type', b'application/json'),
                    (b'content-length', str(len(body)).encode())],
    })
    await send({'type': 'http.response.body', 'body': body})
