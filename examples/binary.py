"""The guide's "Binary Data": binary messages are processed and answered in binary,
text messages are echoed as text.

Run::

    python -m hornbeam_trio examples.binary:application

Changed from the guide: the guide leaves ``process_binary`` undefined ("e.g., image,
protobuf").  Here it stands for an image filter: it inverts every byte, as a negative
of an 8-bit greyscale image would, so a client can check the answer (sending
``b"\\x00\\x0f\\xff"`` returns ``b"\\xff\\xf0\\x00"``).  The message test is
``message.get('bytes') is not None`` instead of ``'bytes' in message``: an ASGI server
may include both keys with one of them ``None`` (hornbeam_trio sends only the one
that is set, so the guide's test works here too, but the stricter one works on every
server).
"""

_INVERT = bytes(255 - value for value in range(256))


def process_binary(data: bytes) -> bytes:
    """Stand-in for real work on binary data: the negative of an 8-bit image."""
    return data.translate(_INVERT)


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        await send({'type': 'websocket.accept'})

        while True:
            message = await receive()

            if message['type'] == 'websocket.disconnect':
                break

            if message['type'] == 'websocket.receive':
                # Handle binary data
                if message.get('bytes') is not None:
                    data = message['bytes']
                    # Process binary (e.g., image, protobuf)
                    result = process_binary(data)
                    await send({
                        'type': 'websocket.send',
                        'bytes': result
                    })
                # Handle text
                elif message.get('text') is not None:
                    await send({
                        'type': 'websocket.send',
                        'text': message['text']
                    })
