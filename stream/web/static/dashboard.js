// The control-room dashboard: one card per stream, the alert timeline, all from /events (server-sent
// events: a full "snapshot" on connect, then "status", "score", "alert" and "image" changes).
// Plain JS, no build step, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const CHART_W = 300; // chart units across (the SVG's viewBox), whatever the span in seconds
const RECONNECT_MS = 3000; // after the server refused us (503) or went away for good

const view = {
  cards: new Map(), // stream -> card
  timeline: [], // episodes, newest first
  timelineMax: 100,
  historyS: 300,
  thresholds: { alert: 0.8, clear: 0.5 },
  clockOffset: 0, // server time - this browser's time, seconds
};

const serverNow = () => Date.now() / 1000 + view.clockOffset;

function hhmmss(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function clockDuration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const mm = String(Math.floor((seconds % 3600) / 60)).padStart(h ? 2 : 1, "0");
  const ss = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function ago(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

// ---- cards ----------------------------------------------------------------------------------------

function card(stream) {
  let c = view.cards.get(stream);
  if (c) return c;
  const el = $("card-template").content.firstElementChild.cloneNode(true);
  el.dataset.stream = stream;
  const q = (sel) => el.querySelector(sel);
  c = {
    stream, el, points: [], alert: null, lastAlert: null, alerts: 0, status: null, snapshotId: null,
    ui: { name: q(".name"), state: q(".state"), score: q(".score"), faces: q(".faces"), fps: q(".fps"), svg: q(".chart"),
          line: q(".chart .line"), area: q(".chart .area"), episodes: q(".chart .episodes"), shot: q(".shot"),
          img: q(".snapshot"), caption: q(".shot figcaption"), alertState: q(".alert-state"), lastAlert: q(".last-alert"),
          detail: q(".detail"), tAlert: q(".threshold.alert"), tClear: q(".threshold.clear") },
  };
  c.ui.name.textContent = stream;
  c.ui.name.title = stream;
  view.cards.set(stream, c);
  $("cards").appendChild(el);
  $("no-streams").hidden = true;
  placeThresholds(c);
  return c;
}

function placeThresholds(c) {
  for (const [line, value] of [[c.ui.tAlert, view.thresholds.alert], [c.ui.tClear, view.thresholds.clear]]) {
    const y = String(100 - value * 100);
    line.setAttribute("y1", y);
    line.setAttribute("y2", y);
  }
}

function applyStatus(s) {
  const c = card(s.stream);
  c.status = s;
  const state = s.error && s.state === "streaming" ? "error" : s.state;
  c.el.dataset.state = state;
  c.ui.state.textContent = state;
  c.ui.fps.textContent = s.fps_in === null || s.fps_in === undefined || s.state !== "streaming" ? "–" : Number(s.fps_in).toFixed(1);
  const parts = [];
  if (s.kind && s.kind !== "url") parts.push(s.kind === "webrtc" ? "WHIP" : s.kind);
  if (s.width && s.height) parts.push(`${s.width}×${s.height}`);
  if (s.error) parts.push(s.error);
  else if (s.detail) parts.push(s.detail);
  c.ui.detail.textContent = parts.join(" · ");
  c.ui.detail.title = c.ui.detail.textContent;
  summary();
}

function applyScore(c, score, faces) {
  c.ui.faces.textContent = faces === null || faces === undefined ? "–" : String(faces);
  if (score === null || score === undefined) {
    c.ui.score.textContent = "–";
    delete c.ui.score.dataset.level;
    c.ui.score.title = "no face in the window";
    return;
  }
  c.ui.score.textContent = score.toFixed(3);
  c.ui.score.title = "";
  c.ui.score.dataset.level = score >= view.thresholds.alert ? "high" : score >= view.thresholds.clear ? "mid" : "low";
}

function addPoint(c, point) {
  const last = c.points[c.points.length - 1];
  if (last && last[0] === point[0]) c.points[c.points.length - 1] = point;
  else if (!last || point[0] > last[0]) c.points.push(point);
  dirty(c);
}

function applyAlert(c) {
  c.el.dataset.alert = c.alert ? "open" : "none";
  const count = `${c.alerts} alert${c.alerts === 1 ? "" : "s"} in all`;
  if (c.alert) {
    c.ui.alertState.textContent = `ALERT · ${clockDuration(serverNow() - c.alert.started_at)}`;
    c.ui.lastAlert.textContent = `since ${hhmmss(c.alert.started_at)} · peak ${c.alert.peak.toFixed(3)} · ${count}`;
  } else if (c.lastAlert) {
    c.ui.alertState.textContent = "no alert";
    c.ui.lastAlert.textContent = `last alert ${hhmmss(c.lastAlert)} (${ago(serverNow() - c.lastAlert)} ago) · ${count}`;
  } else {
    c.ui.alertState.textContent = "no alert";
    c.ui.lastAlert.textContent = "never alerted";
  }
}

function applySnapshot(c, shot) {
  if (!shot) {
    c.ui.shot.hidden = true;
    c.snapshotId = null;
    return;
  }
  if (shot.id !== c.snapshotId) {
    c.snapshotId = shot.id;
    c.ui.img.dataset.id = shot.id;
    c.ui.img.dataset.box = JSON.stringify(shot.box);
    c.ui.img.width = shot.width;
    c.ui.img.height = shot.height;
    c.ui.img.src = shot.url;
  }
  c.ui.caption.textContent = `${hhmmss(shot.time)} · face ${shot.score.toFixed(3)}`;
  c.ui.shot.hidden = false;
}

// ---- chart ------------------------------------------------------------------------------------------

const pending = new Set();
function dirty(c) {
  if (pending.size === 0) requestAnimationFrame(flush);
  pending.add(c);
}
function flush() {
  for (const c of pending) drawChart(c);
  pending.clear();
}

function drawChart(c) {
  const now = serverNow();
  const span = view.historyS;
  while (c.points.length && c.points[0][0] < now - span - 1) c.points.shift();
  const x = (t) => Math.max(0, CHART_W - ((now - t) / span) * CHART_W);
  const step = CHART_W / span; // one second
  let line = "";
  let area = "";
  let run = [];
  let scored = 0;
  const close = () => {
    if (!run.length) return;
    const last = run[run.length - 1];
    run.push([Math.min(CHART_W, last[0] + step), last[1]]); // a point holds its second
    line += `M${run.map(([px, py]) => `${px.toFixed(1)} ${py.toFixed(1)}`).join("L")}`;
    area += `M${run[0][0].toFixed(1)} 100L${run.map(([px, py]) => `${px.toFixed(1)} ${py.toFixed(1)}`).join("L")}L${last[0].toFixed(1)} 100Z`;
    run = [];
  };
  for (const [t, score] of c.points) {
    if (score === null || score === undefined) { close(); continue; }
    run.push([x(t), 100 - score * 100]);
    scored += 1;
  }
  close();
  c.ui.line.setAttribute("d", line);
  c.ui.area.setAttribute("d", area);
  c.ui.svg.dataset.points = String(scored);
  c.ui.svg.dataset.last = c.points.length ? String(c.points[c.points.length - 1][0]) : "";
  // alert episodes of this stream as red bands
  const bands = view.timeline.filter((e) => e.stream === c.stream && (e.ended_at === null || e.ended_at > now - span));
  c.ui.episodes.replaceChildren(...bands.map((e) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const x1 = x(e.started_at);
    const x2 = e.ended_at === null ? CHART_W : x(e.ended_at);
    rect.setAttribute("x", x1.toFixed(1));
    rect.setAttribute("width", Math.max(0.5, x2 - x1).toFixed(1));
    rect.setAttribute("y", "0");
    rect.setAttribute("height", "100");
    return rect;
  }));
}

// ---- timeline and summary ---------------------------------------------------------------------

function upsertEpisode(episode) {
  if (!episode) return;
  const i = view.timeline.findIndex((e) => e.id === episode.id);
  if (i >= 0) view.timeline[i] = episode;
  else view.timeline.unshift(episode);
  view.timeline.sort((a, b) => b.started_at - a.started_at);
  view.timeline.length = Math.min(view.timeline.length, view.timelineMax);
}

function drawTimeline() {
  const now = serverNow();
  const items = view.timeline.map((e) => {
    const li = document.createElement("li");
    li.className = e.ended_at === null ? "open" : "closed";
    li.dataset.id = e.id;
    li.dataset.stream = e.stream;
    const who = document.createElement("div");
    who.className = "who";
    const name = document.createElement("span");
    name.textContent = e.stream;
    const peak = document.createElement("span");
    peak.textContent = e.peak === null ? "" : `peak ${e.peak.toFixed(3)}`;
    who.append(name, peak);
    const when = document.createElement("div");
    when.className = "when";
    const end = e.ended_at === null ? "OPEN" : hhmmss(e.ended_at);
    when.textContent = `${hhmmss(e.started_at)} → ${end} · ${ago((e.ended_at ?? now) - e.started_at)}`;
    li.append(who, when);
    if (e.reason) {
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = e.reason;
      li.append(why);
    }
    return li;
  });
  $("timeline").replaceChildren(...items);
  $("timeline-empty").hidden = items.length > 0;
}

function summary() {
  let live = 0;
  let alerting = 0;
  for (const c of view.cards.values()) {
    if (c.status && c.status.state === "streaming") live += 1;
    if (c.alert) alerting += 1;
  }
  $("count-streams").textContent = String(view.cards.size);
  $("count-live").textContent = String(live);
  $("count-alerts").textContent = String(alerting);
  document.body.dataset.alerting = alerting ? "1" : "0";
}

// ---- events -----------------------------------------------------------------------------------------

function onSnapshot(s) {
  view.clockOffset = s.time - Date.now() / 1000;
  view.historyS = s.history_s;
  view.thresholds = s.thresholds;
  const link = $("publish-link");
  link.hidden = !s.publish;
  if (s.publish) link.href = s.publish;
  const names = new Set(s.streams.map((x) => x.stream));
  for (const [name, c] of view.cards) {
    if (!names.has(name)) { c.el.remove(); view.cards.delete(name); }
  }
  for (const x of s.streams) {
    const c = card(x.stream);
    $("cards").appendChild(c.el); // server order
    placeThresholds(c);
    applyStatus(x);
    applyScore(c, x.score, x.faces);
    c.points = x.history.slice();
    c.alert = x.alert;
    c.alerts = x.alerts;
    c.lastAlert = x.last_alert_time;
    applyAlert(c);
    applySnapshot(c, x.snapshot);
  }
  $("no-streams").hidden = view.cards.size > 0;
  view.timeline = s.timeline.slice();
  drawTimeline();
  for (const c of view.cards.values()) dirty(c);
  summary();
}

function onScore(e) {
  const c = card(e.stream);
  applyScore(c, e.score, e.faces);
  addPoint(c, e.point);
}

function onAlert(e) {
  const c = card(e.stream);
  if (e.event === "end") {
    c.alert = null;
  } else {
    c.alert = { id: e.id, started_at: e.started_at, score: e.score, peak: e.peak };
    if (e.event === "start") { c.alerts += 1; c.lastAlert = e.started_at; }
  }
  applyAlert(c);
  upsertEpisode(e.episode);
  drawTimeline();
  dirty(c);
  summary();
}

function onImage(e) {
  applySnapshot(card(e.stream), e);
}

function setConnection(state, text) {
  document.body.dataset.connection = state;
  $("connection").textContent = text;
}

function connect() {
  const events = new EventSource("/events");
  const on = (kind, handler) => events.addEventListener(kind, (e) => handler(JSON.parse(e.data)));
  on("snapshot", onSnapshot);
  on("status", applyStatus);
  on("score", onScore);
  on("alert", onAlert);
  on("image", onImage);
  events.onopen = () => setConnection("live", "live");
  events.onerror = () => {
    setConnection("lost", "reconnecting");
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, RECONNECT_MS); // refused: the browser won't retry
  };
}

function tick() {
  $("clock").textContent = hhmmss(serverNow());
  for (const c of view.cards.values()) { applyAlert(c); dirty(c); }
  drawTimeline();
}

connect();
tick();
setInterval(tick, 1000);
