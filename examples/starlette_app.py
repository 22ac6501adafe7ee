"""The guide's "Starlette WebSocket": a ``WebSocketRoute`` at ``/ws`` that echoes
``Echo: <text>``.

Run::

    python -m hornbeam_trio examples.starlette_app:app

then ``websocat ws://127.0.0.1:8000/ws`` (the path the guide's "Testing WebSockets"
section uses).

Starlette runs on Trio through AnyIO; nothing in it needs changing for hornbeam_trio.

Changed from the guide, and why: the loop is wrapped in ``try ... except
WebSocketDisconnect``.  When the client leaves, ``receive_text()`` raises
``WebSocketDisconnect``; Starlette's routing does not catch it, so with the guide's
code every ordinary disconnect escapes the app and the server logs it as an
application error with a traceback (uvicorn logs "Exception in ASGI application",
hornbeam_trio "WebSocket app raised").  Catching it makes a client leaving what it
is: the normal end of the session.
"""

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def websocket_handler(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f'Echo: {text}')
    except WebSocketDisconnect:
        pass  # the client left: the session is over


app = Starlette(routes=[
    WebSocketRoute('/ws', websocket_handler),
])
