// The dae dashboard: one table row per daemon (and one per pool worker),
// kept live by the manager's Server-Sent Events (api/events); actions are
// POSTs carrying the X-Dae header.  No external assets, no inline script,
// no innerHTML: every value goes into the page as text.
"use strict";

(function () {
  const HISTORY = 300;       // samples kept per daemon (the server keeps as many)
  const LOG_LINES = 500;     // output lines kept per daemon
  const RUNNING = new Set(["waiting", "starting", "ready", "backoff", "stopping"]);

  const daemons = new Map(); // name -> entry (with cpu, rss, workers)
  const rows = new Map();    // name -> {row, cells, workerRows: Map}
  const histories = new Map(); // name -> [{t, cpu, rss}]
  const logs = new Map();    // name -> [[time, stream, line]]
  const pending = new Set(); // names with an action under way
  let shownLog = null;
  let events = null;

  const $ = (id) => document.getElementById(id);

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      node.setAttribute(key, value);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function formatCpu(p) {
    return p === null || p === undefined ? "–" : p.toFixed(1) + " %";
  }

  function formatDuration(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function showError(message) {
    const node = $("error");
    node.textContent = message || "";
    node.hidden = !message;
  }

  function setConnection(live, text) {
    const node = $("connection");
    node.textContent = text;
    node.className = "connection " + (live ? "up" : "down");
  }

  // Sparklines: an SVG polyline of the last samples.
  const SVG = "http://www.w3.org/2000/svg";

  function sparkline() {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 20");
    svg.setAttribute("preserveAspectRatio", "none");
    const line = document.createElementNS(SVG, "polyline");
    svg.appendChild(line);
    return svg;
  }

  function drawSparkline(svg, values, floor) {
    const line = svg.firstChild;
    const points = values.filter((v) => v !== null && v !== undefined);
    if (points.length < 2) { line.setAttribute("points", ""); return; }
    const top = Math.max(floor, ...points) || 1;
    const step = 100 / (points.length - 1);
    line.setAttribute("points", points.map((v, i) =>
      (i * step).toFixed(2) + "," + (19 - (v / top) * 18).toFixed(2)).join(" "));
  }

  // Rows.

  function makeRow(name) {
    const row = element("tr", {"data-daemon": name, "class": "daemon"});
    const cells = {};
    for (const key of ["name", "state", "pid", "port", "restarts", "uptime", "cpu", "rss", "actions"]) {
      cells[key] = element("td", {"class": key});
      row.appendChild(cells[key]);
    }
    const logLink = element("button", {"type": "button", "class": "link", "title": "show its output"}, name);
    logLink.addEventListener("click", () => openLogs(name));
    cells.name.appendChild(logLink);
    cells.cpuText = element("span", {"class": "value"});
    cells.cpuSpark = sparkline();
    cells.cpu.append(cells.cpuText, cells.cpuSpark);
    cells.rssText = element("span", {"class": "value"});
    cells.rssSpark = sparkline();
    cells.rss.append(cells.rssText, cells.rssSpark);
    cells.buttons = {};
    for (const action of ["start", "stop", "restart"]) {
      const button = element("button", {"type": "button", "data-action": action}, action);
      button.addEventListener("click", () => act(name, action));
      cells.buttons[action] = button;
      cells.actions.appendChild(button);
    }
    return {row, cells, workerRows: new Map()};
  }

  function render(name) {
    const entry = daemons.get(name);
    let view = rows.get(name);
    if (!view) {
      view = makeRow(name);
      rows.set(name, view);
      $("rows").appendChild(view.row);
    }
    const c = view.cells;
    c.state.textContent = entry.state;
    c.state.className = "state " + entry.state;
    c.state.title = entry.reason || "";
    c.pid.textContent = entry.pid === null ? "–" : String(entry.pid);
    c.port.textContent = entry.port === null ? "–" : String(entry.port);
    c.restarts.textContent = String(entry.restarts);
    c.cpuText.textContent = formatCpu(entry.cpu);
    c.rssText.textContent = formatBytes(entry.rss);
    const busy = pending.has(name);
    c.buttons.start.disabled = busy || RUNNING.has(entry.state);
    c.buttons.stop.disabled = busy || !RUNNING.has(entry.state);
    c.buttons.restart.disabled = busy;
    view.row.classList.toggle("busy", busy);
    drawHistory(name);
    updateUptime(name);
    renderWorkers(name, view, entry.workers || []);
  }

  function renderWorkers(name, view, workers) {
    const seen = new Set();
    let after = view.row;
    for (const w of workers) {
      const key = String(w.index);
      seen.add(key);
      let row = view.workerRows.get(key);
      if (!row) {
        row = element("tr", {"class": "worker", "data-daemon": name, "data-worker": key});
        for (const cls of ["name", "state", "pid", "port", "restarts", "uptime", "cpu", "rss", "actions"]) {
          row.appendChild(element("td", {"class": cls}));
        }
        view.workerRows.set(key, row);
      }
      const cells = row.children;
      const connections = w.connections === undefined || w.connections === null ? "" :
        " · " + w.connections + (w.connections === 1 ? " connection" : " connections");
      cells[0].textContent = "worker " + key + connections;
      cells[1].textContent = w.state || "";
      cells[1].className = "state " + (w.state || "");
      cells[2].textContent = w.pid === null || w.pid === undefined ? "–" : String(w.pid);
      cells[3].textContent = "–";
      cells[4].textContent = w.restarts === undefined ? "–" : String(w.restarts);
      cells[5].textContent = w.started && w.pid ? formatDuration(Date.now() - w.started) : "–";
      cells[6].textContent = formatCpu(w.cpu);
      cells[7].textContent = formatBytes(w.rss);
      after.after(row);
      after = row;
    }
    for (const [key, row] of view.workerRows) {
      if (!seen.has(key)) { row.remove(); view.workerRows.delete(key); }
    }
  }

  function updateUptime(name) {
    const entry = daemons.get(name);
    const view = rows.get(name);
    if (!entry || !view) return;
    const running = entry.started && entry.pid !== null && RUNNING.has(entry.state);
    view.cells.uptime.textContent = running ? formatDuration(Date.now() - entry.started) : "–";
  }

  function drawHistory(name) {
    const view = rows.get(name);
    const samples = histories.get(name) || [];
    if (!view) return;
    drawSparkline(view.cells.cpuSpark, samples.map((s) => s.cpu), 100);
    drawSparkline(view.cells.rssSpark, samples.map((s) => s.rss), 0);
  }

  function removeDaemon(name) {
    const view = rows.get(name);
    if (view) {
      view.row.remove();
      for (const row of view.workerRows.values()) row.remove();
    }
    rows.delete(name);
    daemons.delete(name);
    histories.delete(name);
    logs.delete(name);
    if (shownLog === name) closeLogs();
  }

  function upsert(entry) {
    daemons.set(entry.name, entry);
    render(entry.name);
  }

  // Live updates.

  function onSnapshot(data) {
    for (const name of [...daemons.keys()]) removeDaemon(name);
    if (data.manager) {
      $("config").textContent = (data.manager.config || "") + (data.manager.pid ? " · pid " + data.manager.pid : "");
      $("logout").hidden = !data.manager.auth;
    }
    for (const [name, samples] of Object.entries(data.histories || {})) {
      histories.set(name, samples.slice(-HISTORY));
    }
    for (const entry of data.daemons) upsert(entry);
  }

  function onSamples(samples) {
    for (const [name, sample] of Object.entries(samples)) {
      const entry = daemons.get(name);
      if (!entry) continue;
      if (sample.pid !== undefined) {
        const list = histories.get(name) || [];
        list.push(sample);
        if (list.length > HISTORY) list.splice(0, list.length - HISTORY);
        histories.set(name, list);
        if (sample.pid === entry.pid) { entry.cpu = sample.cpu; entry.rss = sample.rss; }
      }
      for (const w of entry.workers || []) {
        const ws = (sample.workers || {})[String(w.index)];
        if (ws && ws.pid === w.pid) { w.cpu = ws.cpu; w.rss = ws.rss; }
      }
      render(name);
    }
  }

  function onLog(data) {
    const list = logs.get(data.name);
    if (!list) return;  // only kept once the panel asked for the start
    list.push(...data.lines);
    if (list.length > LOG_LINES) list.splice(0, list.length - LOG_LINES);
    if (shownLog === data.name) drawLogs();
  }

  function connect() {
    events = new EventSource("api/events");
    const handle = (name, fn) => events.addEventListener(name, (e) => {
      try { fn(JSON.parse(e.data)); } catch (err) { showError("bad event: " + err); }
    });
    handle("snapshot", (d) => { onSnapshot(d); setConnection(true, "live"); showError(""); });
    handle("entry", upsert);
    handle("removed", (d) => removeDaemon(d.name));
    handle("samples", onSamples);
    handle("log", onLog);
    events.addEventListener("error", () => {
      setConnection(false, "reconnecting…");
      if (events.readyState === EventSource.CLOSED) {
        // Refused (e.g. the session expired): find out why, then retry.
        events = null;
        fetch("api/daemons", {credentials: "same-origin"}).then((r) => {
          if (r.status === 401) { window.location.assign("login"); return; }
          setTimeout(connect, 2000);
        }, () => setTimeout(connect, 2000));
      }
    });
  }

  // Actions.

  async function act(name, action) {
    pending.add(name);
    render(name);
    showError("");
    try {
      const response = await fetch("api/daemons/" + encodeURIComponent(name) + "/" + action, {
        method: "POST",
        credentials: "same-origin",
        headers: {"X-Dae": "1"},
      });
      if (response.status === 401) { window.location.assign("login"); return; }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        showError(action + " " + name + ": " + (body.error || response.statusText));
      } else if (body && body.name === name) {
        // Keep the live CPU/RSS: the reply is as fresh as the last event.
        upsert(body);
      }
    } catch (err) {
      showError(action + " " + name + ": " + err);
    } finally {
      pending.delete(name);
      if (daemons.has(name)) render(name);
    }
  }

  // Output lines.

  async function openLogs(name) {
    shownLog = name;
    $("logs-name").textContent = name;
    $("logs").hidden = false;
    try {
      const response = await fetch("api/daemons/" + encodeURIComponent(name) + "/logs?count=200",
        {credentials: "same-origin"});
      if (!response.ok) throw new Error(response.statusText);
      logs.set(name, await response.json());
    } catch (err) {
      logs.set(name, []);
      showError("logs of " + name + ": " + err);
    }
    if (shownLog === name) drawLogs();
  }

  function closeLogs() {
    shownLog = null;
    $("logs").hidden = true;
  }

  function drawLogs() {
    const pre = $("logs-lines");
    const lines = logs.get(shownLog) || [];
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.replaceChildren(...lines.map(([t, stream, line]) => {
      const span = element("span", {"class": "line " + stream},
        new Date(t * 1000).toLocaleTimeString() + "  " + line + "\n");
      return span;
    }));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("logs-close").addEventListener("click", closeLogs);
    $("logout").addEventListener("submit", async (e) => {
      e.preventDefault();
      await fetch("logout", {method: "POST", credentials: "same-origin", headers: {"X-Dae": "1"}});
      window.location.assign("login");
    });
    setInterval(() => { for (const name of daemons.keys()) updateUptime(name); }, 1000);
    connect();
  });
})();
