#!/usr/bin/env python3
"""WebSocket checks and a cuttable TCP proxy for scripts/container-test.sh (needs `websockets`).

  wsprobe.py cross URL_A URL_B [--nodes A,B]   a client on A sends `once` to a client on B:
                                                B receives it, A gets ack `sent`
  wsprobe.py hold URL READY_FILE               connect, write the welcome to READY_FILE, wait
                                                for the server to close; print the close code
  wsprobe.py spread URL N                      open N connections at once; print
                                                {"node": count} from their welcomes
  wsprobe.py lbmsg URL                         through a load balancer: clients until two land
                                                on different nodes, then a message between them
  wsprobe.py proxy PORT HOST:PORT              TCP proxy 127.0.0.1:PORT -> HOST:PORT until
                                                SIGTERM; then every proxied connection is cut
  wsprobe.py refuse PORT                       a node that passes its /readyz check but
                                                answers 503 to everything else (as one that
                                                drains before the check notices); prints a
                                                line per refused request

Each check exits non-zero, with a message, when what it expects does not happen.
"""

import asyncio
import json
import signal
import sys
import uuid

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

TIMEOUT = 15  # seconds for any one expected frame: a hung check fails instead of waiting


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


async def frame(ws, want):
    """The next frame of type `want`, skipping others (presence, pings are not frames)."""
    while True:
        f = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if f.get("type") == want:
            return f


async def cross(url_a, url_b, nodes=None):
    async with connect(url_a) as a, connect(url_b) as b:
        wa, wb = await frame(a, "welcome"), await frame(b, "welcome")
        if nodes and [wa["node"], wb["node"]] != nodes:
            fail(f"clients landed on {wa['node']}, {wb['node']}; expected {nodes}")
        if wa["node"] == wb["node"]:
            fail(f"both clients on node {wa['node']}: the message would not cross nodes")
        await send_once(a, wa, b, wb)
        print(f"ok: {wa['node']} -> {wb['node']}: user {wa['user']} to {wb['user']}, ack sent, delivered")


async def send_once(a, wa, b, wb):
    text = str(uuid.uuid4())
    await a.send(json.dumps({"type": "once", "to": wb["user"], "content": {"text": text}, "id": "c1"}))
    ack = await frame(a, "ack")
    if ack.get("id") != "c1" or ack.get("status") != "sent":
        fail(f"ack: {ack}")
    got = await frame(b, "once")
    if got.get("from") != wa["user"] or got.get("content") != {"text": text}:
        fail(f"delivered: {got}")


async def hold(url, ready_file):
    async with connect(url) as ws:
        w = await frame(ws, "welcome")
        with open(ready_file, "w") as f:
            json.dump(w, f)
        try:
            while True:
                await ws.recv()  # no timeout: the caller stops the server
        except ConnectionClosed as e:
            print(e.rcvd.code if e.rcvd else "none")


async def spread(url, n):
    conns = [await connect(url) for _ in range(n)]
    try:
        counts = {}
        for ws in conns:
            node = (await frame(ws, "welcome"))["node"]
            counts[node] = counts.get(node, 0) + 1
        print(json.dumps(counts, sort_keys=True))
    finally:
        for ws in conns:
            await ws.close()


async def lbmsg(url):
    first = await connect(url)
    w1 = await frame(first, "welcome")
    extra = []
    try:
        for _ in range(10):
            ws = await connect(url)
            w = await frame(ws, "welcome")
            if w["node"] != w1["node"]:
                await send_once(first, w1, ws, w)
                print(f"ok: through the balancer, {w1['node']} -> {w['node']}: ack sent, delivered")
                extra.append(ws)
                return
            extra.append(ws)
        fail(f"10 more connections all landed on {w1['node']}")
    finally:
        for ws in [first, *extra]:
            await ws.close()


async def proxy(port, target):
    host, tport = target.rsplit(":", 1)
    writers, handlers = set(), set()

    async def pipe(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def handle(cr, cw):
        handlers.add(asyncio.current_task())
        try:
            sr, sw = await asyncio.open_connection(host, int(tport))
        except OSError:
            cw.close()
            return
        writers.update((cw, sw))
        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))
        writers.difference_update((cw, sw))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    for w in writers:
        w.transport.abort()
    # Let the handlers see their sockets gone, so that none is cancelled mid-read at exit.
    await asyncio.gather(*(h for h in handlers if not h.done()), return_exceptions=True)


async def refuse(port):
    async def handle(r, w):
        try:
            line = (await r.readline()).decode(errors="replace").split()
            while (await r.readline()).strip():
                pass  # the headers
            ready = len(line) > 1 and line[1] == "/readyz"
            body = b"ready" if ready else b'{"error":"unavailable","message":"server is shutting down"}'
            status = "200 OK" if ready else "503 Service Unavailable"
            w.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await w.drain()
            if not ready:
                print(f"refused {' '.join(line[:2])}", flush=True)
        except OSError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    await server.serve_forever()


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "cross" and len(args) in (2, 4) and (len(args) == 2 or args[2] == "--nodes"):
        run = cross(args[0], args[1], args[3].split(",") if len(args) == 4 else None)
    elif cmd == "hold" and len(args) == 2:
        run = hold(*args)
    elif cmd == "spread" and len(args) == 2:
        run = spread(args[0], int(args[1]))
    elif cmd == "lbmsg" and len(args) == 1:
        run = lbmsg(args[0])
    elif cmd == "proxy" and len(args) == 2:
        run = proxy(int(args[0]), args[1])
    elif cmd == "refuse" and len(args) == 1:
        run = refuse(int(args[0]))
    else:
        fail(__doc__)
    try:
        asyncio.run(run)
    except InvalidStatus as e:
        fail(f"{cmd}: upgrade refused: HTTP {e.response.status_code} {e.response.body!r}")
    except (OSError, asyncio.TimeoutError, WebSocketException) as e:
        fail(f"{cmd}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv)
