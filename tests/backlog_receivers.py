"""Webhook receivers for the attempt-limit test, run as a process of their own.

In the test's process they would share its event loop with Clarion, and add their work
to its: here what they see of each call does not wait on Clarion's loop.

The URL's first path segment is the receiver's kind: ``fail`` answers 500, ``limited``
429, ``hang`` nothing (the connection closes after ``--hang`` seconds), ``flaky`` 503
twice then 200, ``ok`` 200. Each call is recorded under its delivery (the
``Idempotency-Key``) with the answer (0: none). Prints its port on the first line of its
output; a line ``calls`` on its input prints every call (JSON) and ends it.

    python tests/backlog_receivers.py --hang 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys

ANSWERS = {"fail": 500, "limited": 429, "ok": 200}


class Receivers:
    def __init__(self, hang: float) -> None:
        self.calls: dict[str, list[int]] = collections.defaultdict(list)
        self._hang = hang

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                calls = self.calls[headers["idempotency-key"]]
                kind = lines[0].split(" ")[1].split("/")[1]
                if kind == "hang":
                    calls.append(0)
                    await asyncio.sleep(self._hang)
                    break
                status = ANSWERS.get(kind) or (503 if len(calls) < 2 else 200)
                calls.append(status)
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


async def main(hang: float) -> None:
    receivers = Receivers(hang)
    server = await asyncio.start_server(receivers.serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline) not in ("", "calls\n"):
        pass
    server.close()
    print(json.dumps(receivers.calls), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hang", type=float, default=1.0)
    asyncio.run(main(parser.parse_args().hang))
