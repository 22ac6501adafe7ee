"""The guide's "FastAPI WebSocket": ``/ws/{room}`` echoes with the room's name and
counts the room's users in shared state.

Run::

    python -m hornbeam_trio examples.fastapi_app:app

then connect to ``ws://127.0.0.1:8000/ws/lobby``: ``hi`` comes back as
``Room lobby: hi``.  ``GET /rooms/lobby`` returns ``{"room": "lobby", "users": n}``.

Changed from the guide: nothing in the WebSocket endpoint.  FastAPI (through
Starlette) uses AnyIO, which runs on Trio: hornbeam_trio serves the app from its Trio
event loop and ``from hornbeam_erlang import state_incr`` works inside it as under
Hornbeam.  Added: the ``GET /rooms/{room}`` route, which reads the counter with
``state_get`` so the count can be watched from outside.

Note the guide's bookkeeping: the counter goes down only when the endpoint sees
``WebSocketDisconnect``, which is how a client leaving shows up in
``receive_text()``; any other exception would leave it counted.  In hornbeam_trio,
``state_incr(key, owned=True)`` would make the server take the increment back on
every way the connection ends.
"""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from hornbeam_erlang import state_get, state_incr

app = FastAPI()


@app.websocket("/ws/{room}")
async def websocket_endpoint(websocket: WebSocket, room: str):
    await websocket.accept()
    state_incr(f'room:{room}:users')

    try:
        while True:
            data = await websocket.receive_text()
            await websocket.send_text(f"Room {room}: {data}")
    except WebSocketDisconnect:
        state_incr(f'room:{room}:users', -1)


@app.get("/rooms/{room}")
async def room_users(room: str):
    return {'room': room, 'users': state_get(f'room:{room}:users') or 0}
