"""Drives tessera with the official MCP Python SDK (PyPI `mcp` 2.x).

Usage:
    sdk_client.py http   legacy|modern URL
    sdk_client.py stdio  legacy|modern SERVER_BINARY [ARGS...]

Exits 0 when every check passes; prints what it checked. Each step is bounded
by a timeout so a hang fails instead of stalling the test run.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

STEP_TIMEOUT = 20


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


async def exercise(session, era, transport):
    if era == "legacy":
        init = await session.initialize()
        check(init.server_info.name == "tessera", "initialize names the server")
        check(session.protocol_version == init.protocol_version, f"negotiated {init.protocol_version}")
    else:
        disc = await session.discover()
        check("2026-07-28" in disc.supported_versions, "discover lists 2026-07-28")
        check(session.protocol_version == "2026-07-28", "discover adopted 2026-07-28")
        check(session.server_info is not None and session.server_info.name == "tessera", "serverInfo in _meta")

    tools = await session.list_tools()
    names = sorted(t.name for t in tools.tools)
    check(names == ["add", "echo", "kv_delete", "kv_get", "kv_set", "sleep"], f"tools/list: {names}")

    r = await session.call_tool("echo", {"text": f"hello from python over {transport}"})
    check(r.content[0].text == f"hello from python over {transport}", "echo round-trips")
    r = await session.call_tool("add", {"a": 2, "b": 40})
    check(r.structured_content == {"sum": 42}, "add returns structured content")
    r = await session.call_tool("echo", {})
    check(r.is_error, "bad arguments are a tool error")

    progress = []

    async def on_progress(p, total, message):
        progress.append(p)

    r = await session.call_tool("sleep", {"ms": 200}, progress_callback=on_progress)
    check(r.content[0].text == "slept 200 ms", "sleep completes")
    check(len(progress) >= 3 and progress == sorted(progress), f"progress notifications arrive in order: {progress}")

    r = await session.call_tool("kv_set", {"key": f"py-{era}", "value": {"era": era}})
    check(r.structured_content["created"] in (True, False), "kv_set")
    res = await session.read_resource(f"kv://py-{era}")
    check(json.loads(res.contents[0].text) == {"era": era}, "resources/read of a kv entry")
    templates = await session.list_resource_templates()
    check(templates.resource_templates[0].uri_template == "kv://{key}", "resource template")


async def subscribe_and_watch(make_session, era):
    """Legacy only: resources/subscribe, then an update arrives unprompted."""
    updates = asyncio.Queue()

    async def handler(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            await updates.put(str(root.params.uri))

    async with make_session(handler) as session:
        await session.initialize()
        await session.subscribe_resource("kv://watched-by-python")
        await session.call_tool("kv_set", {"key": "watched-by-python", "value": 1})
        uri = await asyncio.wait_for(updates.get(), STEP_TIMEOUT)
        check(uri == "kv://watched-by-python", "notifications/resources/updated delivered")
        await session.unsubscribe_resource("kv://watched-by-python")


def session_factory(transport, target):
    import contextlib

    @contextlib.asynccontextmanager
    async def make(message_handler=None):
        if transport == "http":
            ctx = streamable_http_client(target[0])
        else:
            ctx = stdio_client(StdioServerParameters(command=target[0], args=target[1:]))
        async with ctx as streams:
            read, write = streams[0], streams[1]
            kwargs = {"message_handler": message_handler} if message_handler else {}
            async with ClientSession(read, write, **kwargs) as session:
                yield session

    return make


async def main():
    transport, era, *target = sys.argv[1:]
    make = session_factory(transport, target)
    async with make() as session:
        await asyncio.wait_for(exercise(session, era, transport), STEP_TIMEOUT * 3)
    if era == "legacy":
        await asyncio.wait_for(subscribe_and_watch(make, era), STEP_TIMEOUT)
    print("ALL CHECKS PASSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
