// The iotrt page: status and events from /api/live (server-sent events), video from /video/.
// Everything that comes from the device is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const STATES = ["running", "starting", "stopping", "backoff", "stopped", "exited", "failed"];
const MAX_EVENTS = 200;
let lastEventId = 0;
const pictured = new Set();
let topics = [];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(v, digits) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "-";
}

function duration(s) {
  if (typeof s !== "number" || !isFinite(s)) return "-";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function short(v, n) {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s && s.length > n ? s.slice(0, n - 1) + "\u2026" : s;
}

function showStatus(st) {
  $("error").hidden = st.ok;
  if (!st.ok) { $("error").textContent = st.error; setBadge($("state"), "down"); return; }
  $("graph").textContent = st.graph || "";
  setBadge($("state"), st.state);
  $("uptime").textContent = "up " + duration(st.uptime_s);
  // CPU and memory belong to processes: a process group's nodes show their shared process's
  const procs = new Map((st.processes || []).map((p) => [p.process, p]));
  const mb = (v) => num(typeof v === "number" ? v / 1048576 : null, 1);
  const rows = [];
  for (const n of st.nodes) {
    const p = procs.get(n.process) || n;
    const tr = el("tr");
    tr.dataset.node = n.node;
    const state = el("span", n.state, "badge");
    setBadge(state, n.state);
    const cells = [n.node, n.kind, state, n.process ?? n.node, p.pid ?? "-", num(p.cpu_pct, 1),
      mb(p.rss_bytes), mb(p.pss_bytes), num(n.in_per_s, 1), num(n.out_per_s, 1), n.drops ?? 0,
      n.restarts ?? 0, duration(n.uptime_s)];
    for (const c of cells) {
      const td = el("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = String(c);
      tr.appendChild(td);
    }
    rows.push(tr);
  }
  $("nodes").replaceChildren(...rows);
  const lat = st.latency || {};
  $("latency").textContent = lat.n ? `capture \u2192 decision: p50 ${lat.p50_ms} ms, p99 ${lat.p99_ms} ms (last ${lat.n})` : "";
  if (JSON.stringify(st.images) !== JSON.stringify(topics)) setTopics(st.images || []);
}

function setBadge(e, state) {
  e.textContent = state || "?";
  e.className = "badge " + (STATES.includes(state) || state === "down" ? state : "");
}

function setTopics(list) {
  topics = list;
  const sel = $("topic");
  const keep = sel.value;
  sel.replaceChildren(...list.map((t) => { const o = el("option", t); o.value = t; return o; }));
  if (list.includes(keep)) sel.value = keep;
  if (!keep && list.length) play(true);
}

function play(on) {
  const img = $("video");
  const topic = $("topic").value;
  // Dropping src closes the MJPEG connection: the device stops encoding for us.
  if (on && topic) img.src = "/video/" + topic.split("/").map(encodeURIComponent).join("/");
  else img.removeAttribute("src");
  $("play").textContent = on ? "stop" : "play";
}

function summary(ev) {
  const f = ev.fields || {};
  switch (ev.kind) {
    case "rule_fired": return `rule ${f.rule} fired`;
    case "command_sent": case "command_acked":
      return `${f.output} \u2190 ${short(f.data ?? f.ack, 120)} (rule ${f.rule})`;
    case "command_failed": return `${f.output || ""} failed: ${short(f.error, 160)}`;
    case "command_applied": case "command_refused":
      return `${short(f.command, 100)} \u2192 ${short(f.result, 100)}`;
    case "lifecycle": return `${f.state} (was ${f.prev})${f.reason ? ": " + f.reason : ""}`;
    default: return short(f, 200);
  }
}

function showEvent(ev) {
  if (typeof ev.id !== "number" || ev.id <= lastEventId) return;
  lastEventId = ev.id;
  const li = el("li", null, /^[a-z_]+$/.test(ev.kind) ? ev.kind : "");
  const t = new Date(ev.t_ns / 1e6);
  const time = el("time", t.toLocaleTimeString());
  time.dateTime = t.toISOString();
  const what = el("span", summary(ev), "what");
  what.title = JSON.stringify(ev.fields);
  for (const m of ev.media || []) {
    // a picture once (the snapshot's own event), a link wherever else the file is named
    const picture = m.image && !pictured.has(m.file);
    const href = "/media/" + encodeURIComponent(m.folder) + "/" + encodeURIComponent(m.file);
    const a = el("a", picture ? "" : " " + m.file);
    a.href = href;
    a.target = "_blank";
    if (picture) {
      pictured.add(m.file);
      const img = el("img");
      img.src = href;
      img.alt = m.file;
      a.appendChild(img);
    }
    what.appendChild(a);
  }
  li.append(time, el("span", ev.kind), el("span", ev.node, "node"), what);
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function connect() {
  const src = new EventSource("/api/live");
  src.addEventListener("status", (m) => showStatus(JSON.parse(m.data)));
  src.addEventListener("event", (m) => showEvent(JSON.parse(m.data)));
  src.onerror = () => setBadge($("state"), "down");
}

document.addEventListener("DOMContentLoaded", () => {
  $("topic").addEventListener("change", () => play(true));
  $("play").addEventListener("click", () => play(!$("video").getAttribute("src")));
  document.addEventListener("visibilitychange", () => play(!document.hidden));
  connect();
});
