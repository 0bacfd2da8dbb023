// polypstream live view: one EventSource brings every stream's state and newest pictures.
"use strict";

const tiles = new Map(); // stream id -> its <section>
const main = document.getElementById("streams");
const empty = document.getElementById("empty");
const connection = document.getElementById("connection");
// A picture shown longer than this (or three of its stream's frame intervals, where longer)
// is marked stale: a frozen frame must not pass for a live one, nor its alerts for current ones.
const STALE_MS = 1000;
let connected = false;

// Why a tile's picture is stale, in words ("" while it is fresh): shown `ageMs` ago, of a
// stream at `fps` (null: not known yet) in `state`, over a connection that is up or not.
function staleWords(ageMs, fps, state, isConnected) {
  const age = `${(ageMs / 1000).toFixed(1)} s`;
  if (!isConnected) return `server unreachable: this picture is ${age} old`;
  if (ageMs <= Math.max(STALE_MS, fps ? 3000 / fps : 0)) return "";
  const why = { ended: "the source has ended", failed: "the source failed", reconnecting: "the source is reconnecting" };
  return `no new frame for ${age}` + (why[state] ? `: ${why[state]}` : "");
}

function markStale() {
  const now = performance.now();
  for (const tile of tiles.values()) {
    if (tile.shownAt === undefined) continue; // no picture yet
    const fps = tile.dataset.fps ? Number(tile.dataset.fps) : null;
    const words = staleWords(now - tile.shownAt, fps, tile.dataset.state, connected);
    tile.classList.toggle("stale", words !== "");
    tile.querySelector(".stale-words").textContent = words;
  }
}

function tileFor(stream) {
  let tile = tiles.get(stream.id);
  if (!tile) {
    tile = document.getElementById("tile").content.firstElementChild.cloneNode(true);
    tile.dataset.id = stream.id;
    tile.querySelector(".name").textContent = stream.name;
    tile.querySelector(".kind").textContent = stream.kind === "source" ? "server source" : "client stream";
    tiles.set(stream.id, tile);
    main.appendChild(tile);
  }
  return tile;
}

function ms(value) {
  return value === null ? "–" : value.toFixed(1) + " ms";
}

function gpuLine(gpu) {
  if (!gpu) return ""; // on a CPU, or before the first reading
  const busy = gpu.busy === null ? "" : `${Math.round(gpu.busy * 100)} % busy, `;
  return ` · ${gpu.name}: ${busy}${gpu.memory_used_gib.toFixed(1)} of ${gpu.memory_total_gib.toFixed(1)} GiB`;
}

function showState(state) {
  const m = state.model;
  const alerts = m.alerts ? ` · alerts ${m.alerts}` : "";
  document.getElementById("model").textContent = `model ${m.name} ${m.version} on ${m.provider}${alerts}${gpuLine(state.gpu)}`;
  const listed = new Set(state.streams.map((s) => s.id));
  for (const [id, tile] of tiles) {
    if (!listed.has(id)) {
      tile.remove();
      tiles.delete(id);
    }
  }
  for (const stream of state.streams) {
    const tile = tileFor(stream);
    tile.querySelector(".state").textContent = stream.state;
    tile.dataset.state = stream.state;
    tile.dataset.fps = stream.fps ?? "";
    tile.querySelector(".fps").textContent = stream.fps === null ? "–" : stream.fps.toFixed(1);
    tile.querySelector(".latency").textContent = `${ms(stream.p50_ms)} / ${ms(stream.p99_ms)}`;
    tile.querySelector(".dropped").textContent =
      `${stream.dropped} of ${stream.frames} (${stream.dropped_recent} in the last ${state.window_s} s)`;
    tile.querySelector(".alerts").textContent = stream.alerts ?? "–";
  }
  empty.hidden = tiles.size > 0;
}

function polypItem(polyp, held) {
  const item = document.createElement("li");
  item.className = held ? "held" : polyp.alerting ? "alerting" : "confirming";
  const what = held ? "held" : polyp.alerting ? "ALERT" : "confirming";
  item.textContent = `#${polyp.track_id} ${polyp.score.toFixed(2)} ${what}`;
  item.dataset.trackId = polyp.track_id;
  item.dataset.box = polyp.box.join(","); // x,y,w,h in the picture's pixels
  return item;
}

function showPicture(picture) {
  const tile = tiles.get(picture.id);
  if (!tile) return; // listed with the next state
  // Decoded off-screen, then swapped in with its index and polyps: what the tile lists is
  // always what its picture shows, and a picture overtaken while decoding is never shown.
  tile.dataset.pending = picture.index;
  const image = new Image();
  image.alt = tile.querySelector("img").alt;
  image.src = "data:image/jpeg;base64," + picture.jpeg;
  image.decode().then(
    () => {
      if (tile.dataset.pending !== String(picture.index)) return;
      tile.querySelector("img").replaceWith(image);
      tile.shownAt = performance.now();
      tile.dataset.index = picture.index;
      tile.querySelector(".index").textContent = picture.index;
      const items = picture.polyps.map((p) => polypItem(p, false)).concat(picture.held.map((p) => polypItem(p, true)));
      tile.querySelector(".polyps").replaceChildren(...items);
    },
    () => {}, // not decodable (cannot happen with the server's JPEGs): the last picture stays
  );
}

const events = new EventSource("/events");
events.addEventListener("state", (e) => showState(JSON.parse(e.data)));
events.addEventListener("picture", (e) => showPicture(JSON.parse(e.data)));
events.onopen = () => {
  connected = true;
  connection.textContent = "live";
  connection.className = "up";
};
events.onerror = () => {
  connected = false;
  markStale();
  connection.textContent = "reconnecting…";
  connection.className = "down";
  if (events.readyState === EventSource.CLOSED) {
    setTimeout(() => location.reload(), 2000); // refused (signed out, or the server restarted with a new token)
  }
};
setInterval(markStale, 250);
