// Publishes the camera to the service's WHIP endpoint and shows the stream's status and score
// from its server-sent events.  Plain JS, no build step, nothing fetched from elsewhere.
// Query string: ?stream=<name>&autostart=1 starts publishing on load (used by the tests).
"use strict";

const $ = (id) => document.getElementById(id);
const ICE_GATHER_TIMEOUT_MS = 3000;
let session = null; // {pc, media, location, headers}
let events = null;

function show(id, text) { $(id).textContent = text; }

function fail(message) {
  show("error", message);
  document.body.dataset.state = "error";
}

// The whole offer with every candidate: the endpoint does not take trickle ICE.
function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
  });
}

function watch(stream) {
  if (events) events.close();
  events = new EventSource(`/events/${encodeURIComponent(stream)}`);
  events.addEventListener("status", (e) => {
    const status = JSON.parse(e.data);
    show("status", status.detail ? `${status.state} (${status.detail})` : status.state);
    document.body.dataset.state = status.state;
  });
  events.addEventListener("score", (e) => {
    const score = JSON.parse(e.data);
    show("score", score.score === null ? "no face yet" : score.score.toFixed(3));
    $("meter").value = score.score === null ? 0 : score.score;
    show("faces", String(score.faces));
  });
}

async function start(stream, token) {
  show("error", "");
  const headers = { "Content-Type": "application/sdp" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  $("preview").srcObject = media;
  const pc = new RTCPeerConnection();
  session = { pc, media, location: null, headers };
  for (const track of media.getVideoTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  pc.addEventListener("connectionstatechange", () => show("publisher", pc.connectionState));
  watch(stream);
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  show("publisher", "offering");
  const endpoint = `/whip/${encodeURIComponent(stream)}`;
  const response = await fetch(endpoint, { method: "POST", headers, body: pc.localDescription.sdp });
  if (response.status !== 201) throw new Error(`WHIP ${response.status}: ${(await response.text()).trim()}`);
  session.location = new URL(response.headers.get("Location"), new URL(endpoint, location.href)).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  show("publisher", "answered");
}

async function stop() {
  const current = session;
  session = null;
  if (!current) return;
  if (current.location) {
    const headers = current.headers.Authorization ? { Authorization: current.headers.Authorization } : {};
    await fetch(current.location, { method: "DELETE", headers, keepalive: true }).catch(() => {});
  }
  current.pc.close();
  current.media.getTracks().forEach((t) => t.stop());
  $("preview").srcObject = null;
  show("publisher", "stopped");
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
}

async function onStart(event) {
  if (event) event.preventDefault();
  setRunning(true);
  try {
    await start($("stream").value.trim(), $("token").value.trim());
  } catch (err) {
    fail(String(err && err.message ? err.message : err));
    await stop();
    setRunning(false);
  }
}

$("publish").addEventListener("submit", onStart);
$("stop").addEventListener("click", async () => { await stop(); setRunning(false); });
window.addEventListener("pagehide", () => { stop(); }); // ends the session at once, not after the watchdog

const params = new URLSearchParams(location.search);
if (params.get("stream")) $("stream").value = params.get("stream");
if (params.get("autostart") === "1") onStart();
