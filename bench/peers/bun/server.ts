// Bun peer for bench/run: uWebSockets (C++) under Bun.serve.
//
// WS /ws/echo          echoes every message unchanged
// WS /ws/rooms/{room}  pub/sub relay: every message a member sends goes to every
//                      OTHER member of the room (ws.publish excludes the sender)
// GET /health          ok
//
// Run: node_modules/.bin/bun server.ts --port 9003   (or PORT=9003)
// Written for this benchmark against Bun's documented API; nothing copied.

const arg = process.argv.indexOf("--port");
const port = Number(arg > 0 ? process.argv[arg + 1] : process.env.PORT ?? 9003);

type Data = { room: string | null };

const server = Bun.serve<Data, {}>({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path === "/health") return new Response("ok");
    if (path === "/ws/echo") {
      if (server.upgrade(req, { data: { room: null } })) return;
    } else if (path.startsWith("/ws/rooms/")) {
      const room = decodeURIComponent(path.slice("/ws/rooms/".length));
      if (room.length > 0 && server.upgrade(req, { data: { room } })) return;
    }
    return new Response("not found", { status: 404 });
  },
  websocket: {
    // Same incoming limit as the other peers (4 MiB); no compression, no
    // idle timeout (the idle scenario holds connections open on purpose).
    maxPayloadLength: 4 * 1024 * 1024,
    idleTimeout: 0,
    perMessageDeflate: false,
    backpressureLimit: 1024 * 1024,
    open(ws) {
      if (ws.data.room !== null) ws.subscribe(ws.data.room);
    },
    message(ws, message) {
      if (ws.data.room === null) ws.send(message);
      else ws.publish(ws.data.room, message);
    },
  },
});

console.log(`bun peer listening on ${server.hostname}:${server.port}`);
