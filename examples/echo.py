"""The guide's "Basic WebSocket Handler": every text message comes back as ``Echo: <text>``.

Run::

    python -m hornbeam_trio examples.echo:application

Changed from the guide: nothing in the handler.  ``hornbeam:start("app:application",
#{worker_class => asgi})`` becomes the command above (every hornbeam_trio app is ASGI).
The app ignores every scope but ``websocket``, as the guide's does: the server then
answers plain HTTP with 500 and, since the app does not answer the lifespan protocol,
starts without it (``--lifespan auto``).
"""


# app.py
async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        # Accept the connection
        await send({'type': 'websocket.accept'})

        while True:
            message = await receive()

            if message['type'] == 'websocket.disconnect':
                break

            if message['type'] == 'websocket.receive':
                # Echo the message back
                text = message.get('text', '')
                await send({
                    'type': 'websocket.send',
                    'text': f'Echo: {text}'
                })
