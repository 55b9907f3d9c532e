// The official @fal-ai/client's realtime connection against Visus: one good input, one bad one.
// Run: node --experimental-websocket realtime.mjs (env VISUS_URL, VISUS_KEY, PNG_PATH); prints a JSON summary.
import { readFileSync } from "node:fs";
import { createFalClient } from "@fal-ai/client";

const ORIGIN = process.env.VISUS_URL;
const MAP = [
  ["https://queue.fal.run/", `${ORIGIN}/queue/`],
  ["https://fal.run/", `${ORIGIN}/`],
  ["https://rest.fal.ai/", `${ORIGIN}/rest/`],
];
const rewrite = (url) => {
  for (const [from, to] of MAP) if (url.startsWith(from)) return to + url.slice(from.length);
  return url;
};
const fetchVia = (input, init) =>
  fetch(rewrite(typeof input === "string" ? input : input instanceof URL ? input.href : input.url), init);

// The client opens wss://fal.run/... with the global WebSocket: point it at Visus.
const NativeWebSocket = globalThis.WebSocket;
globalThis.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) {
    super(String(url).replace("wss://fal.run/", `${ORIGIN.replace("http", "ws")}/`), protocols);
  }
};

const fal = createFalClient({ credentials: process.env.VISUS_KEY, fetch: fetchVia });
const png = new Uint8Array(readFileSync(process.env.PNG_PATH));
const summary = { results: [], errors: [] };
const answers = () => summary.results.length + summary.errors.length;
const answered = async (count) => {
  while (answers() < count) await new Promise((resolve) => setTimeout(resolve, 20));
};

const connection = fal.realtime.connect("fal-ai/sam2/image", {
  throttleInterval: 0,
  tokenProvider: async (app) => {
    summary.tokenApp = app;
    const response = await fetch(`${ORIGIN}/rest/tokens/`, {
      method: "POST",
      headers: { Authorization: `Key ${process.env.VISUS_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ allowed_apps: ["sam2"], token_expiration: 120 }),
    });
    return await response.json();
  },
  onResult: (result) => summary.results.push(result),
  onError: (error) => summary.errors.push({ message: error.message, status: error.status }),
});

const timeout = setTimeout(() => { console.log(JSON.stringify({ ...summary, timedOut: true })); process.exit(1); }, 60000);
connection.send({ image_url: png, prompts: [{ x: 20, y: 30, label: 1 }], sync_mode: true });
await answered(1);
connection.send({ image_url: png, prompts: [{ x: 20, y: 30, label: 7 }] });
await answered(2);
connection.close();
clearTimeout(timeout);
summary.results = summary.results.map((r) => ({ width: r.image.width, url: r.image.url.slice(0, 22) }));
console.log(JSON.stringify(summary));
process.exit(0);
