"""The guide's "Configuration": the WebSocket idle timeout and maximum frame size.

Hornbeam sets them in Erlang::

    hornbeam:start("app:application", #{
        worker_class => asgi,
        websocket_timeout => 60000,           % Idle timeout (ms)
        websocket_max_frame_size => 16777216  % Max frame size (16MB)
    }).

hornbeam_trio uses the same names and units, as command-line flags::

    python -m hornbeam_trio examples.configuration:application \\
        --websocket-timeout 60000 --websocket-max-frame-size 16777216

or as keyword options of ``hornbeam_trio.run()`` (what ``python -m
examples.configuration`` does, see the bottom of this file)::

    hornbeam_trio.run("examples.configuration:application",
                      websocket_timeout=60000, websocket_max_frame_size=16777216)

``--websocket-timeout MS`` (default 60000; 0 disables it): a connection on which the
peer sends no frame at all (no message, no ping, no pong) for that long is closed by
the server with code 1001 and reason ``idle timeout``.  The server pings a quiet peer
every ``--websocket-ping-interval`` ms (default 20000) and a live client's pong
counts as activity, so keep the interval below the timeout if clients should
survive merely listening; with the interval above the timeout, only clients that
send something themselves stay connected.

``--websocket-max-frame-size N`` (default 16777216): the largest frame, and the
largest message reassembled from fragments, the server accepts.  A bigger one is
refused with close code 1009 (message too big) before it is buffered.

``python -m hornbeam_trio --help`` lists every option.  The app itself is a plain echo
(text and bytes come back unchanged): the settings are the server's, not the app's.
"""

import os


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        await send({'type': 'websocket.accept'})
        while True:
            message = await receive()
            if message['type'] == 'websocket.disconnect':
                break
            if message.get('text') is not None:
                await send({'type': 'websocket.send', 'text': message['text']})
            else:
                await send({'type': 'websocket.send', 'bytes': message['bytes']})


if __name__ == '__main__':
    import hornbeam_trio

    # The hornbeam:start(...) call above, in Python.  HORNBEAM_BIND picks the address.
    hornbeam_trio.run(
        'examples.configuration:application',
        bind=os.environ.get('HORNBEAM_BIND', '127.0.0.1:8000'),
        websocket_timeout=60000,         # Idle timeout (ms)
        websocket_max_frame_size=16777216,  # Max frame size (16MB)
    )
