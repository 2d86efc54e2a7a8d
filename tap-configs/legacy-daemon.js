// A foreign daemon written the way the original Node.js `dae` package does
// it: replies carry no newline, every read is taken as one packet, and `dae`
// answers with a credential and closes.  The demo tree runs it as a
// `command`; the manager learns its port from the process's own sockets.
"use strict";
const net = require("net");
const created = Date.now();
const name = process.env.DAE || "Legacy";
const commands = {
  whois: () => ["credential", [{ name, pid: process.pid, port: server.address().port, created }]],
  options: () => ["commands", [{ whois: 0, options: 0, dae: 0, ping: 0 }]],
  ping: () => ["ping", ["pong"]],
};
const server = net.createServer((socket) => {
  socket.on("error", () => {});
  socket.on("data", (data) => {
    const text = data.toString();
    const space = text.indexOf(" ");
    const command = (space < 0 ? text.slice(0, -1) : text.slice(0, space)).trim();
    if (command === "dae") {
      socket.end("credential " + JSON.stringify([name, process.pid, server.address().port, null]));
      return;
    }
    const handler = commands[command];
    if (handler) {
      const [reply, args] = handler();
      socket.write(reply + " " + JSON.stringify(args));
    }
  });
});
server.listen(Number(process.env.PORT || 0), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
