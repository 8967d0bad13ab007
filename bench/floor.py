"""The durable floor: bare aiohttp plus a SQLite journal, ``synchronous=FULL``.

Started by ``bench/run.py`` as its own process. It does the least any durable
receiver must do before a 202: read the body, parse the JSON, and write it to
SQLite in WAL mode with ``synchronous=FULL``, with group commit (requests that
arrive while a transaction is on its way to disk go together in the next one,
one fsync for the batch). Nothing else: no auth, no validation, no logging, no
worker. The receiver's ingest is read against this floor in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

from aiohttp import web


class Journal:
    """One connection, one writer thread at a time, group commit."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY, "
            "received REAL NOT NULL, body BLOB NOT NULL)"
        )
        self._lock = threading.Lock()
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _write(self, bodies: list[bytes]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            now = time.time()
            self._db.executemany(
                "INSERT INTO journal (received, body) VALUES (?, ?)",
                [(now, b) for b in bodies],
            )
            self._db.execute("COMMIT")

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await asyncio.to_thread(self._write, [b for b, _ in batch])
            for _, future in batch:
                future.set_result(None)

    async def append(self, body: bytes) -> None:
        """Return once ``body`` is committed."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((body, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future


def build(path: Path) -> web.Application:
    """The floor app."""
    journal = Journal(path)

    async def accept(request: web.Request) -> web.Response:
        body = await request.read()
        data = json.loads(body)
        await journal.append(body)
        return web.json_response(
            {"status": "accepted", "alerts": len(data.get("alerts", []))}, status=202
        )

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/webhooks/alertmanager", accept)
    app.router.add_get("/readyz", ready)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(
        build(args.db), host="127.0.0.1", port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
