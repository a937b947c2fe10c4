// Node.js `ws` peer for bench/run.
//
// WS /ws/echo          echoes every message unchanged (same type: text/binary)
// WS /ws/rooms/{room}  relay: every message a member sends goes to every OTHER
//                      member of the room
// GET /health          ok
//
// Run: node server.js --port 9004   (or PORT=9004)
// Written for this benchmark against the `ws` package's documented API.
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const arg = process.argv.indexOf("--port");
const port = Number(arg > 0 ? process.argv[arg + 1] : process.env.PORT || 9004);

const rooms = new Map(); // room name -> Set of sockets
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 4 << 20 });

const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.end("ok");
  } else {
    res.statusCode = 404;
    res.end("not found");
  }
});

server.on("upgrade", (req, socket, head) => {
  const path = req.url.split("?")[0];
  let room = null;
  if (path.startsWith("/ws/rooms/") && path.length > "/ws/rooms/".length) {
    room = decodeURIComponent(path.slice("/ws/rooms/".length));
  } else if (path !== "/ws/echo") {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (room === null) {
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
      return;
    }
    let members = rooms.get(room);
    if (!members) rooms.set(room, (members = new Set()));
    members.add(ws);
    ws.on("message", (data, isBinary) => {
      for (const other of members) {
        if (other !== ws && other.readyState === 1) other.send(data, { binary: isBinary });
      }
    });
    ws.on("close", () => {
      members.delete(ws);
      if (members.size === 0) rooms.delete(room);
    });
  });
});

server.listen(port, "127.0.0.1", () => console.log(`node ws peer listening on 127.0.0.1:${port}`));
