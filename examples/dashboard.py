"""The guide's "Live Dashboard Example": metrics pushed to each WebSocket client every second.

Run::

    python -m hornbeam_trio examples.dashboard:application

connect to ``ws://127.0.0.1:8000/`` and watch; ``curl http://127.0.0.1:8000/`` and
``curl http://127.0.0.1:8000/error`` move the numbers; ``curl
http://127.0.0.1:8000/stats`` shows what the server holds (``hornbeam_trio.stats()``).

Changed from the guide, and why (asyncio -> Trio):

* ``asyncio.create_task(push_metrics(send))`` ... ``push_task.cancel()`` becomes a
  nursery owned by the connection: ``async with trio.open_nursery() as nursery:
  nursery.start_soon(push_metrics, send)``, and the ``finally`` cancels the nursery's
  scope when the client disconnects.  The difference matters: the ``async with`` does
  not exit until the push task has really finished, so when the app returns nothing
  of the connection is left running, and an exception in ``push_metrics`` is not
  lost in a forgotten task but ends the connection (the server closes it with 1011
  and logs the traceback).
* ``asyncio.sleep(1)`` becomes ``trio.sleep(1)``.
* The guide reads ``metrics:*`` keys that something else writes.  Here the same app
  writes them: every plain HTTP request counts in ``metrics:requests`` (``/error``
  also in ``metrics:errors``, answered 500) and ``metrics:latency_p99`` is the 99th
  percentile, in ms, of the last 100 requests' handling times.  ``GET /stats``
  returns ``hornbeam_trio.stats()`` (connections, tasks per connection,
  subscriptions, owned keys) and is not counted.

The ``state_get`` calls are the guide's, unchanged.
"""

import json
import time

import trio

import hornbeam_trio
from hornbeam_erlang import state_get, state_incr, state_set

RECENT = 100
"""Requests whose handling times make up ``metrics:latency_p99``."""


async def application(scope, receive, send):
    if scope['type'] == 'websocket':
        await send({'type': 'websocket.accept'})

        # Start background task to push updates, in a nursery this connection owns
        async with trio.open_nursery() as nursery:
            nursery.start_soon(push_metrics, send)

            try:
                while True:
                    message = await receive()
                    if message['type'] == 'websocket.disconnect':
                        break
            finally:
                nursery.cancel_scope.cancel()
    elif scope['type'] == 'http':
        await http_endpoint(scope, receive, send)


async def push_metrics(send):
    while True:
        # Get metrics from ETS
        metrics = {
            'requests': state_get('metrics:requests') or 0,
            'errors': state_get('metrics:errors') or 0,
            'latency_p99': state_get('metrics:latency_p99') or 0,
        }

        await send({
            'type': 'websocket.send',
            'text': json.dumps(metrics)
        })

        await trio.sleep(1)  # Update every second


async def http_endpoint(scope, receive, send):
    """``/stats``: the server's view, uncounted; ``/error``: a counted 500; else a counted 200."""
    if scope['path'] == '/stats':
        await respond(send, 200, hornbeam_trio.stats())
        return
    started = time.perf_counter()
    state_incr('metrics:requests')
    if scope['path'] == '/error':
        state_incr('metrics:errors')
        await respond(send, 500, {'error': 'something broke (on purpose)'})
    else:
        await respond(send, 200, {'ok': True})
    record_latency((time.perf_counter() - started) * 1000)


def record_latency(ms):
    recent = [*(state_get('metrics:recent_latencies') or [])[-(RECENT - 1):], ms]
    state_set('metrics:recent_latencies', recent)
    ordered = sorted(recent)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    state_set('metrics:latency_p99', round(p99, 3))


async def respond(send, status, value):
    body = json.dumps(value).encode()
    await send({
        'type': 'http.response.start',
        'status': status,
        'headers': [(b'content-type', b'application/json'),
                    (b'content-length', str(len(body)).encode())],
    })
    await send({'type': 'http.response.body', 'body': body})
