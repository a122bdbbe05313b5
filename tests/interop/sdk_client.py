"""Drives tessera with the official MCP Python SDK (PyPI `mcp` 2.x).

Usage:
    sdk_client.py http   legacy|modern URL
    sdk_client.py stdio  legacy|modern SERVER_BINARY [ARGS...]
    sdk_client.py http-fixtures   legacy|modern URL            (server run with --fixtures conformance)
    sdk_client.py stdio-fixtures  legacy|modern SERVER_BINARY [ARGS...]

The fixtures modes cover prompts, resources and templates, resource-update
notifications (legacy resources/subscribe; modern subscriptions/listen),
sampling, elicitation and roots (legacy: requests from the server on the
session; modern: input_required rounds the SDK drives with the same
callbacks).

Exits 0 when every check passes; prints what it checked. Each step is bounded
by a timeout so a hang fails instead of stalling the test run.
"""

import asyncio
import os
import json
import sys

import mcp.types as types
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


async def trigger_until_delivered(updates, trigger):
    """Runs `trigger(n)` until an update reaches `updates`; returns its URI.

    The SDK opens its standalone GET stream in the background, and a GET
    without Last-Event-ID receives only what is emitted after it (Streamable
    HTTP), so on a loaded machine the first update can come before the
    stream is open. Each retry emits a new update."""
    for n in range(1, STEP_TIMEOUT // 2 + 1):
        await trigger(n)
        try:
            return await asyncio.wait_for(updates.get(), 1.0)
        except asyncio.TimeoutError:
            continue
    return None


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
        uri = await trigger_until_delivered(
            updates, lambda n: session.call_tool("kv_set", {"key": "watched-by-python", "value": n})
        )
        check(uri == "kv://watched-by-python", "notifications/resources/updated delivered")
        await session.unsubscribe_resource("kv://watched-by-python")


async def on_sampling(context, params):
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="hi from python"), model="py-model"
    )


async def on_elicitation(context, params):
    return types.ElicitResult(action="accept", content={"username": "py", "email": "py@example.com"})


async def on_roots(context):
    return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/py-root", name="py")])


async def call(session, era, name, args):
    """tools/call; in the modern era, answers input_required rounds through
    the session's own callbacks (the SDK's dispatch_input_request)."""
    if era == "legacy":
        return await session.call_tool(name, args)
    from mcp.client.session import ClientRequestContext

    r = await session.call_tool(name, args, allow_input_required=True)
    rounds = 0
    while isinstance(r, types.InputRequiredResult):
        rounds += 1
        check(rounds <= 5, f"{name}: at most 5 input rounds")
        answers = {}
        for key, req in r.input_requests.items():
            ctx = ClientRequestContext(session=session, request_id=f"mrtr-{key}")
            answers[key] = await session.dispatch_input_request(ctx, req)
        r = await session.call_tool(
            name, args, allow_input_required=True, input_responses=answers, request_state=r.request_state
        )
    check(rounds >= 1, f"{name}: the server asked through input_required")
    return r


async def start(session, era):
    if era == "legacy":
        await session.initialize()
    else:
        await session.discover()


async def exercise_fixtures(session, era):
    prompts = await session.list_prompts()
    by_name = {p.name: p for p in prompts.prompts}
    for name in ["test_simple_prompt", "test_prompt_with_arguments", "test_prompt_with_embedded_resource", "test_prompt_with_image"]:
        check(name in by_name, f"prompts/list has {name}")
    args = {a.name: a.required for a in by_name["test_prompt_with_arguments"].arguments}
    check(args == {"arg1": True, "arg2": True}, "prompt arguments arg1, arg2 required")
    r = await session.get_prompt("test_prompt_with_arguments", {"arg1": "hello", "arg2": "world"})
    check(r.messages[0].content.text == "Prompt with arguments: arg1='hello', arg2='world'", "prompts/get with arguments")
    r = await session.get_prompt("test_prompt_with_image")
    check(r.messages[0].content.type == "image" and r.messages[0].content.mime_type == "image/png", "prompt with an image")
    r = await session.get_prompt("test_prompt_with_embedded_resource", {"resourceUri": "test://static-text"})
    check(str(r.messages[0].content.resource.uri) == "test://static-text", "prompt embeds the resource")

    res = await session.list_resources()
    uris = {str(x.uri) for x in res.resources}
    check({"test://static-text", "test://static-binary", "test://watched-resource"} <= uris, "resources/list")
    r = await session.read_resource("test://static-text")
    check(r.contents[0].text == "This is the content of the static text resource.", "read a text resource")
    r = await session.read_resource("test://static-binary")
    check(r.contents[0].mime_type == "image/png" and len(r.contents[0].blob) > 20, "read a binary resource")
    t = await session.list_resource_templates()
    check(any(x.uri_template == "test://template/{id}/data" for x in t.resource_templates), "template listed")
    r = await session.read_resource("test://template/42/data")
    check(json.loads(r.contents[0].text) == {"id": "42", "templateTest": True, "data": "Data for ID: 42"}, "read through a template")

    r = await call(session, era, "test_sampling", {"prompt": "Say hi"})
    check(r.content[0].text == "LLM response: hi from python", f"sampling ({era}): {r.content[0].text}")
    r = await call(session, era, "test_elicitation", {"message": "Who are you?"})
    text = r.content[0].text
    check(text.startswith("User response: action=accept") and "py@example.com" in text, f"elicitation ({era}): {text}")
    r = await call(session, era, "test_list_roots", {})
    check("file:///tmp/py-root" in r.content[0].text, f"roots ({era})")


async def watch_fixture(make, era):
    """A resource update reaches the client: legacy subscribe, modern listen."""
    if era == "legacy":
        updates = asyncio.Queue()

        async def handler(message):
            root = getattr(message, "root", message)
            if getattr(root, "method", None) == "notifications/resources/updated":
                await updates.put(str(root.params.uri))

        async with make(handler) as session:
            await session.initialize()
            await session.subscribe_resource("test://watched-resource")
            uri = await trigger_until_delivered(
                updates, lambda n: session.call_tool("test_trigger_resource_update", {})
            )
            check(uri == "test://watched-resource", "legacy: notifications/resources/updated delivered")
        return
    from mcp.client.subscriptions import listen

    async with make() as session:
        await session.discover()
        async with listen(session, resource_subscriptions=["test://watched-resource"]) as sub:
            await session.call_tool("test_trigger_resource_update", {})
            event = await asyncio.wait_for(sub.__anext__(), STEP_TIMEOUT)
            check("watched-resource" in repr(event), f"modern: resource update on the listen stream: {event!r}")


def session_factory(transport, target, **callbacks):
    import contextlib

    @contextlib.asynccontextmanager
    async def make(message_handler=None):
        if transport == "http":
            token = os.environ.get("MCP_BEARER_TOKEN")
            ca_file = os.environ.get("MCP_CA_FILE")
            if ca_file:
                # HTTPS against a test CA: the SDK's client settings, plus
                # trust in that CA only.
                import ssl

                import httpx2
                from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

                headers = {"Authorization": f"Bearer {token}"} if token else None
                client = httpx2.AsyncClient(
                    verify=ssl.create_default_context(cafile=ca_file),
                    headers=headers,
                    timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
                )
                ctx = streamable_http_client(target[0], http_client=client)
            elif token:
                from mcp.shared._httpx_utils import create_mcp_http_client

                client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
                ctx = streamable_http_client(target[0], http_client=client)
            else:
                ctx = streamable_http_client(target[0])
        else:
            ctx = stdio_client(StdioServerParameters(command=target[0], args=target[1:]))
        async with ctx as streams:
            read, write = streams[0], streams[1]
            kwargs = dict(callbacks)
            if message_handler:
                kwargs["message_handler"] = message_handler
            async with ClientSession(read, write, **kwargs) as session:
                yield session

    return make


async def main_fixtures(transport, era, target):
    make = session_factory(
        transport,
        target,
        sampling_callback=on_sampling,
        elicitation_callback=on_elicitation,
        list_roots_callback=on_roots,
    )
    async with make() as session:
        await start(session, era)
        await asyncio.wait_for(exercise_fixtures(session, era), STEP_TIMEOUT * 3)
    await asyncio.wait_for(watch_fixture(make, era), STEP_TIMEOUT)
    print("ALL CHECKS PASSED", flush=True)


async def main():
    transport, era, *target = sys.argv[1:]
    if transport.endswith("-fixtures"):
        await main_fixtures(transport.removesuffix("-fixtures"), era, target)
        return
    make = session_factory(transport, target)
    async with make() as session:
        await asyncio.wait_for(exercise(session, era, transport), STEP_TIMEOUT * 3)
    if era == "legacy":
        await asyncio.wait_for(subscribe_and_watch(make, era), STEP_TIMEOUT)
    print("ALL CHECKS PASSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
