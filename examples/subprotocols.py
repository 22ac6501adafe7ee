"""The guide's "Subprotocols": pick ``graphql-ws``, else ``json``, else none, and
speak accordingly.

Run::

    python -m hornbeam_trio examples.subprotocols:application

The client's offer is in ``scope['subprotocols']`` (parsed from its
``Sec-WebSocket-Protocol`` header, in the client's order); the choice goes back in
``websocket.accept``.  With ``'subprotocol': None`` the handshake names none.

Changed from the guide: the guide leaves the two handlers undefined.  Here

* ``handle_graphql`` speaks the core of the ``graphql-ws`` protocol (Apollo's
  ``subscriptions-transport-ws``): ``connection_init`` -> ``connection_ack``; ``start``
  with a query -> ``data`` then ``complete`` for that id; ``stop`` -> ``complete``;
  ``connection_terminate`` closes.  Its "schema" is a toy: selecting ``hello`` gives
  ``"world"`` and ``server`` gives ``"hornbeam_trio"``; any other field is an
  ``error`` message.
* ``handle_generic`` (given the chosen subprotocol as a fourth argument) under
  ``json`` answers every JSON message with ``{"echo": value}``
  and closes with 1003 (unsupported data) when a message is not JSON; with no
  subprotocol it echoes text and bytes unchanged.
"""

import json
import re

FIELDS = {'hello': 'world', 'server': 'hornbeam_trio'}
"""The toy GraphQL schema: field name -> value."""

_SELECTION = re.compile(r'^\s*(?:query\s*\w*\s*)?\{([\s\w]*)\}\s*$')


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        # Check requested subprotocols
        requested = scope.get('subprotocols', [])

        # Choose one we support
        if 'graphql-ws' in requested:
            subprotocol = 'graphql-ws'
        elif 'json' in requested:
            subprotocol = 'json'
        else:
            subprotocol = None

        await send({
            'type': 'websocket.accept',
            'subprotocol': subprotocol
        })

        # Handle based on protocol
        if subprotocol == 'graphql-ws':
            await handle_graphql(scope, receive, send)
        else:
            await handle_generic(scope, receive, send, subprotocol)


def run_query(query):
    """``{ hello server }`` -> ``({'hello': 'world', 'server': 'hornbeam_trio'}, None)``."""
    match = _SELECTION.match(query or '')
    if match is None:
        return None, f'cannot parse query {query!r}: expected {{ field ... }}'
    names = match.group(1).split()
    unknown = [name for name in names if name not in FIELDS]
    if not names or unknown:
        return None, f'cannot query field(s) {unknown or names!r}; known: {sorted(FIELDS)}'
    return {name: FIELDS[name] for name in names}, None


async def handle_graphql(scope, receive, send):
    async def reply(**message):
        await send({'type': 'websocket.send', 'text': json.dumps(message)})

    while True:
        message = await receive()
        if message['type'] == 'websocket.disconnect':
            return
        try:
            request = json.loads(message.get('text') or '')
        except ValueError:
            await reply(type='connection_error', payload={'message': 'messages are JSON text'})
            continue
        kind = request.get('type')
        op_id = request.get('id')
        if kind == 'connection_init':
            await reply(type='connection_ack')
        elif kind == 'start':
            data, error = run_query(request.get('payload', {}).get('query'))
            if error is None:
                await reply(type='data', id=op_id, payload={'data': data})
            else:
                await reply(type='error', id=op_id, payload=[{'message': error}])
            await reply(type='complete', id=op_id)
        elif kind == 'stop':
            await reply(type='complete', id=op_id)
        elif kind == 'connection_terminate':
            await send({'type': 'websocket.close', 'code': 1000})
            return
        else:
            await reply(type='error', id=op_id, payload=[{'message': f'unknown type {kind!r}'}])


async def handle_generic(scope, receive, send, subprotocol=None):
    while True:
        message = await receive()
        if message['type'] == 'websocket.disconnect':
            return
        text = message.get('text')
        if subprotocol == 'json':
            try:
                value = json.loads(text if text is not None else message['bytes'])
            except ValueError:
                await send({'type': 'websocket.close', 'code': 1003, 'reason': 'expected JSON'})
                return
            await send({'type': 'websocket.send', 'text': json.dumps({'echo': value})})
        elif text is not None:
            await send({'type': 'websocket.send', 'text': text})
        else:
            await send({'type': 'websocket.send', 'bytes': message['bytes']})
