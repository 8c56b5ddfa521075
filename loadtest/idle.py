#!/usr/bin/env python3
"""Idle-connection helper for the load test.

`idle.py serve PORT` accepts connections, echoes what it receives and keeps
them open. `idle.py hold HOST PORT N` opens N connections, does one small
exchange on each (so every proxy has moved data once, as a keep-alive client
would), prints READY, and holds them until its stdin closes.
"""
import asyncio
import sys


async def serve(port: int) -> None:
    async def handle(reader, writer):
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def hold(host: str, port: int, count: int) -> None:
    connections = []
    batch = 250
    for start in range(0, count, batch):
        opened = await asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(min(batch, count - start)))
        )
        for reader, writer in opened:
            writer.write(b"ping\n")
        for reader, writer in opened:
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout=30)
            if line != b"ping\n":
                raise SystemExit(f"unexpected reply {line!r}")
        connections.extend(opened)
    print("READY", len(connections), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for _, writer in connections:
        writer.close()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    elif len(sys.argv) == 5 and sys.argv[1] == "hold":
        asyncio.run(hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        raise SystemExit("usage: idle.py serve PORT | idle.py hold HOST PORT N")


if __name__ == "__main__":
    main()
