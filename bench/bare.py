"""The baseline: a bare aiohttp app that parses the JSON body and answers 202.

Started by ``bench/run.py`` as its own process; the receiver's ingest numbers
are read against this one's on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    data = json.loads(await request.read())
    return web.json_response(
        {"status": "accepted", "alerts": len(data.get("alerts", []))}, status=202
    )


async def ready(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/webhooks/alertmanager", accept)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
