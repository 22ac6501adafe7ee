"""The guide's "Error Handling": an exception in the handler closes the WebSocket with
1011 (internal error) and the reason ``Internal server error``.

Run::

    python -m hornbeam_trio examples.errors:application

Send a number ``n`` and get ``100 / n`` back; send ``0`` and the division fails: the
client sees the close frame ``1011 Internal server error``.

Changed from the guide, and why:

* The guide leaves ``handle_websocket`` undefined; here it is the calculator above,
  whose ``ZeroDivisionError`` stands for any bug.
* The ``except`` block also logs the exception with its traceback
  (``logger.exception``) before closing: an error that is only turned into a close
  code is invisible to whoever runs the server.
* Only ``Exception`` is caught, as in the guide; Trio's ``Cancelled`` (server
  shutdown) is a ``BaseException`` and passes through untouched, as it must.

Without the ``try``, hornbeam_trio would do the same on its own: an app that raises
after accepting gets close code 1011 with reason ``Internal server error`` and the
traceback is logged.
"""

import logging

logger = logging.getLogger('examples.errors')


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        try:
            await send({'type': 'websocket.accept'})
            await handle_websocket(scope, receive, send)
        except Exception:
            logger.exception('WebSocket handler failed (path %s)', scope.get('path'))
            # Close with error code
            await send({
                'type': 'websocket.close',
                'code': 1011,  # Internal error
                'reason': 'Internal server error'
            })


async def handle_websocket(scope, receive, send):
    while True:
        message = await receive()
        if message['type'] == 'websocket.disconnect':
            return
        divisor = float(message.get('text') or 'nan')
        await send({'type': 'websocket.send', 'text': f'{100 / divisor:g}'})
