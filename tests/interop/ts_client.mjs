// The official MCP TypeScript SDK (@modelcontextprotocol/sdk) as a client of
// a tessera server over Streamable HTTP: a session, the tool list, a call,
// a call with progress notifications, ping, and closing the session.
// Prints ALL CHECKS PASSED when every check held; exits 1 otherwise.
//
//   node ts_client.mjs URL
//
// Run through tests/interop/ts_client.sh, which installs Node and the SDK.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = process.argv[2];
let failed = 0;
function check(ok, what) {
  console.log(`${ok ? "ok" : "FAILED"}: ${what}`);
  if (!ok) failed += 1;
}

const client = new Client({ name: "tessera-ts-interop", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(url));
await client.connect(transport);
check(client.getServerVersion()?.name === "tessera", "initialize names the server");
check(typeof transport.sessionId === "string" && transport.sessionId.length > 0, "a session id");

const { tools } = await client.listTools();
check(tools.some((t) => t.name === "echo"), "tools/list has echo");

const echoed = await client.callTool({ name: "echo", arguments: { text: "over https" } });
check(echoed.content?.[0]?.text === "over https", "echo answers");

let progress = 0;
const slept = await client.callTool(
  { name: "sleep", arguments: { ms: 300 } },
  undefined,
  { onprogress: () => { progress += 1; } },
);
check(slept.content?.[0]?.text === "slept 300 ms", "sleep answers");
check(progress > 0, `progress notifications arrived (${progress})`);

await client.ping();
check(true, "ping");

await transport.terminateSession();
await client.close();
if (failed === 0) {
  console.log("ALL CHECKS PASSED");
} else {
  console.log(`${failed} check(s) failed`);
  process.exit(1);
}
