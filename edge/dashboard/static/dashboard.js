// The dashboard page: one EventSource for the summary (the server sends at most two a second),
// redrawn once per animation frame at most; rejects and pictures fetched only when they change.
// Everything is drawn with textContent and canvas: nothing from the line is parsed as HTML.
"use strict";

const GALLERY_SIZE = 12;
// A reject's tile and the latest picture cover about these sides squared, in the frame's shape.
const TILE_SIDE = 128;
const LATEST_SIDE = 256;
const frameShapes = new Map(); // camera id -> [h, w] of its latest frame
const IMAGE_EVERY_MS = 1000; // the latest result's picture, at most once a second per camera
// The gallery refreshes at most twice a second, so a reject shows within 2 s. In a storm of
// rejects (a refresh that brought more than STORM_TILES new ones) a person cannot look at every
// tile anyway: it refreshes every 1.5 s, and each open page asks the edge box for a third as much.
const GALLERY_EVERY_MS = 500;
const STORM_EVERY_MS = 1500;
const STORM_TILES = 6;
// The record's daily tally changes slowly: once a minute per camera is plenty.
const DAILY_EVERY_MS = 60000;
// A day's unreviewed rejects are walked from one answer of /api/results, its largest.
const QUEUE_SIZE = 1000;
// A part's results, newest first: each camera that saw it, and each time it came by again.
const PART_RESULTS = 50;
const STREAMED_REJECTS = 200; // the stream's rejects a part search looks among (/api/rejects' most)
// A reject's pictures stand beside its details when taller than this over their width, on a
// window at least this wide (a phone keeps them above).
const TALL_PICTURE = 1.3;
const BESIDE_MIN_WIDTH = 900;
const REM = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;

// `queue`: while the detail walks a day's unreviewed rejects (from the tally), that day's
// {camera, day, more}; a part's results, {part, more}; null while it walks the gallery.
// `ignored`: the rectangles measured on the open reject's frame, in its pixels (measureIgnored).
// `masks`: how each inspection mask the daemons served was given, by its sha256 (learnMasks).
// `packages`: the folder each model is served from, by its sha256 (learnPackages).
const state = { summary: null, drawPending: false, cameras: new Map(), open: null, openList: [], queue: null,
                glances: new Map(), ignored: [], masks: new Map(), packages: new Map() };
window.vqadStats = { events: 0, renders: 0, galleryFetches: 0 }; // read by tests and the bench

function $(root, field) { return root.querySelector(`[data-field="${field}"]`); }
function setText(root, field, text) { const el = $(root, field); if (el.textContent !== text) el.textContent = text; }
function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`; }
function num(x, digits = 4) { return x === null || x === undefined ? "–" : Number(x).toPrecision(digits); }
function when(ns) { return ns ? new Date(ns / 1e6).toLocaleString() : "–"; }
function pill(el, text, kind) { el.textContent = text; el.className = `pill ${kind}`; }

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error(body.error || `${response.status} ${response.statusText}`);
    err.status = response.status;
    err.body = body;
    throw err;
  }
  return body;
}

// -- the live summary ---------------------------------------------------------------------
function connect() {
  const source = new EventSource("api/events");
  source.addEventListener("summary", (event) => {
    state.summary = JSON.parse(event.data);
    learnMasks(state.summary.daemon);
    learnPackages(state.summary.daemon);
    window.vqadStats.events += 1;
    if (!state.drawPending) {
      state.drawPending = true;
      requestAnimationFrame(draw);
    }
  });
  source.onerror = () => pill(document.querySelector('[data-field="daemon-state"]'), "dashboard unreachable", "bad");
}

function draw() {
  state.drawPending = false;
  const s = state.summary;
  if (!s) return;
  drawDaemon(s.daemon);
  const all = Object.keys(s.cameras);
  const ids = CAMERA_FILTER ? all.filter(CAMERA_FILTER.matches) : all;
  drawNoCameras(all, ids);
  for (const id of ids) drawCamera(id, s.cameras[id], s.daemon);
  drawOverview(ids, all.length, s.cameras);
  // A camera the dashboard no longer keeps (past CAMERAS_SHOWN newer ones: a sender that names
  // its parts as cameras) leaves the page too, instead of showing its last state for good.
  const kept = new Set(ids);
  for (const [id, cam] of state.cameras) {
    if (kept.has(id)) continue;
    clearTimeout(cam.galleryTimer);
    cam.node.remove();
    state.cameras.delete(id);
  }
  placeInOrder(ids);
  goToLinkedCard();
  window.vqadStats.renders += 1;
}

function drawNoCameras(all, ids) {
  const empty = document.getElementById("no-cameras");
  empty.hidden = ids.length > 0;
  if (all.length && !ids.length) {
    empty.textContent = `None of the ${all.length} cameras is one of ?camera=${CAMERA_FILTER.text}.`;
  }
}

// -- the line at a glance ---------------------------------------------------------------------
// `?camera=ID,ID` (an id, or a pattern with *) keeps the page to those cameras: a station's
// screen. A camera's tile above the cards says whether it is well, and a click goes to its card.
const CAMERA_FILTER = cameraFilter(new URLSearchParams(location.search).get("camera"));
if (CAMERA_FILTER) document.title = `vqad: ${CAMERA_FILTER.text}`; // a station's tab says whose it is

function cameraFilter(text) {
  const patterns = (text || "").split(",").map((p) => p.trim()).filter(Boolean);
  if (!patterns.length) return null;
  const escaped = (p) => p.replace(/[.+?^$|()[\]{}\\]/g, "\\$&"); // all but *, which stands for any run
  const regexes = patterns.map((p) => new RegExp("^" + escaped(p).replace(/\*/g, ".*") + "$"));
  return { text: patterns.join(","), matches: (id) => regexes.some((re) => re.test(id)) };
}

function drawOverview(ids, total, cameras) {
  const nav = document.getElementById("overview");
  nav.hidden = ids.length < 2 && !(CAMERA_FILTER && total);
  const filter = document.getElementById("overview-filter");
  filter.hidden = !CAMERA_FILTER;
  if (CAMERA_FILTER) {
    filter.replaceChildren(`${ids.length} of ${total} cameras (?camera=${CAMERA_FILTER.text}) · `);
    const all = document.createElement("a");
    all.href = location.pathname;
    all.textContent = "show all";
    filter.appendChild(all);
  }
  for (const id of ids) drawGlance(id, cameras[id]);
  const kept = new Set(ids);
  for (const [id, tile] of state.glances) {
    if (kept.has(id)) continue;
    tile.remove();
    state.glances.delete(id);
  }
  const tiles = ids.map((id) => state.glances.get(id));
  const shown = [...nav.querySelectorAll(":scope > a.glance")];
  if (!tiles.every((tile, i) => shown[i] === tile)) for (const tile of tiles) nav.appendChild(tile);
}

function drawGlance(id, c) {
  let tile = state.glances.get(id);
  if (!tile) {
    tile = document.createElement("a");
    tile.href = `#${encodeURIComponent(id)}`;
    tile.dataset.glance = id;
    for (const field of ["name", "decision", "rate", "age", "unreviewed"]) {
      const part = document.createElement(field === "name" ? "b" : "span");
      part.dataset.field = field;
      tile.appendChild(part);
    }
    $(tile, "name").textContent = id;
    tile.addEventListener("click", (event) => { event.preventDefault(); goToCard(id); });
    state.glances.set(id, tile);
  }
  const [kind, why] = glanceState(c);
  tile.className = `glance ${kind}`;
  tile.title = why;
  const latest = c.latest;
  const decision = $(tile, "decision");
  decision.className = latest ? latest.decision || "error" : "";
  const unfit = latest && unfitReasons(latest) ? " camera unfit" : ""; // a fail whatever its score
  setText(tile, "decision", latest ? `${(latest.decision || latest.status).toUpperCase()}${unfit} ${num(latest.score, 3)}` : "–");
  setText(tile, "rate", `fail rate 5 min ${pct(c.fail_rate_5min)}`);
  setText(tile, "age", why);
  // Where the review work waits: the fails of the card's 7 days nobody has reviewed (its tally).
  const unreviewed = state.cameras.get(id)?.unreviewed;
  setText(tile, "unreviewed", unreviewed ? `${unreviewed} not reviewed (7 days)` : "");
}

// A camera's fail-rate alarm (its daemon's heartbeat, edge/fail_rate.py) in words.
function failRateAlarmText(a) {
  const since = new Date(a.since_ns / 1e6).toLocaleTimeString();
  // mostly the camera health gate's fails: the camera is to be seen to, not the process
  const unfit = a.unfit ? `, ${a.unfit} of them unfit frames` : "";
  return `fail-rate alarm: ${a.fails} of the last ${a.of} failed${unfit} (limit ${Math.round(100 * a.limit)}%) since ${since}`;
}

// A master part's check (its daemon's heartbeat) in words: the server's, as the daemon's log says
// it (edge.master.master_words).
function masterText(m) { return m.said; }

// Whether a master part's check was made on a frame the model did not judge (an error result, a
// fail of the camera health gate): no proof either way (the API's `outcome`, edge.master.outcome).
function unjudged(m) { return m.outcome === "unproven"; }

// Why a master part's check is no proof, for the pill's tooltip: only a decision the model made on
// a fit frame says the parts since its last right check are suspect.
function masterWrongWhy(m) {
  if (unjudged(m)) return "the master part's frame was not judged by the model: no proof of the inspection; run it again";
  return "a master part of known verdict did not get it: the parts since its last right check are suspect";
}

// The check said of a master part: its latest judged one, but for a right one whose master part
// was run since on a frame the model did not judge: that run (a wrong one stands whatever came since).
function shownCheck(m) { return m.outcome === "right" && m.unjudged ? m.unjudged : m; }

// The camera's master parts whose check the model decided wrongly (red), and those whose latest
// run it did not judge (amber: run them again).
function wrongMasters(c) { return (c.master_parts || []).filter((m) => m.outcome === "wrong"); }
function unjudgedMasters(c) { return (c.master_parts || []).map(shownCheck).filter(unjudged); }
// How many more checks there are like the first one said: " and 2 more wrong".
function moreLike(checks, like) { return checks.length > 1 ? ` and ${checks.length - 1} more ${like}` : ""; }

function lastFrameAge(c) { return c.age_s === null ? "no frame yet" : `last frame ${c.age_s.toFixed(1)} s ago`; }

// [kind, words] of a camera's tile: what an operator must see from across the room first.
function glanceState(c) {
  if (c.recorded_only) return ["warn", "no frame since the dashboard started"];
  const age = lastFrameAge(c);
  // A paused camera's silence is the line's own (a changeover, a repair): it says paused, not down.
  if (c.paused) return ["warn", `paused: not inspected, ${age}`];
  if (c.silent) return ["bad", `silent: ${age}`];
  const wrong = wrongMasters(c), unjudgedChecks = unjudgedMasters(c);
  if (wrong.length) return ["bad", `${masterText(wrong[0])}${moreLike(wrong, "wrong")}, ${age}`];
  if (c.fail_rate_alarm) return ["bad", `${failRateAlarmText(c.fail_rate_alarm)}, ${age}`];
  if (c.drift && c.drift.alarm) return ["bad", `drift alarm (KS ${num(c.drift.ks, 3)}), ${age}`];
  if (unjudgedChecks.length) return ["warn", `${masterText(unjudgedChecks[0])}${moreLike(unjudgedChecks, "not judged")}, ${age}`];
  return ["ok", age];
}

// A link to a camera's card (…/#cam3, kept from a click on its tile) opens at that card, once
// the card is drawn.
function goToLinkedCard() {
  let id = location.hash.slice(1);
  try { id = decodeURIComponent(id); } catch { /* a hash typed by hand, not encoded: as it is */ }
  if (state.linkFollowed || !id || !state.cameras.has(id)) return;
  state.linkFollowed = true;
  requestAnimationFrame(() => goToCard(id));
}

// The camera's card at the top of the window, below the header that stays there.
function goToCard(id) {
  const cam = state.cameras.get(id);
  if (!cam) return;
  const header = document.querySelector("header").getBoundingClientRect().height;
  window.scrollTo({ top: cam.node.getBoundingClientRect().top + window.scrollY - header - 8 });
  history.replaceState(null, "", `${location.search}#${encodeURIComponent(id)}`);
}

function drawDaemon(d) {
  const bar = document.getElementById("daemon");
  const el = $(bar, "daemon-state");
  bar.classList.toggle("record-alone", d.streamed === false);
  if (d.streamed === false) pill(el, "the record alone: no daemon's stream followed", "ok");
  else if (d.daemons) pill(el, ...daemonsState(d.daemons));
  else pill(el, ...daemonState(d));
  el.title = d.vqad_version ? `vqad ${d.vqad_version}` : ""; // a box upgraded, or not yet
  drawDaemons($(bar, "daemons"), d.daemons);
  drawRecordState($(bar, "record-state"), d);
  drawClockState($(bar, "clock-state"), d);
  // Results the page's feed missed (the gaps in their seq: it fell behind a burst): its counts
  // are short by them; the record's tally is not.
  const feed = $(bar, "feed-state");
  feed.hidden = !d.results_missed;
  if (d.results_missed) feed.textContent = `page missed ${d.results_missed} results: counts are short, the tally is not`;
  setText(bar, "throughput", num(d.throughput_per_s, 3));
  setText(bar, "queue", d.queue_depth === undefined ? "–" : String(d.queue_depth));
  setText(bar, "threshold", d.daemons ? "per camera" : num(d.threshold)); // several daemons: on each histogram
  setText(bar, "threshold-source", thresholdSource(d.threshold_source, d.inspection));
  setText(bar, "reloads", d.reloads === undefined ? "–" : `${d.reloads} (${d.reload_failures || 0} refused)`);
  setText(bar, "updated", `updated ${new Date().toLocaleTimeString()}`);
}

// [text, kind] of one daemon's pill: from its metrics, or its heartbeat without them.
function daemonState(d) {
  if (d.results_refused) return [d.results_refused, "bad"];
  if (d.up === null || d.up === undefined) return ["daemon: not heard from yet", "warn"];
  if (!d.up) return [d.never_heard_s ? `daemon down: never heard from in ${span(d.never_heard_s)}` : "daemon down", "bad"];
  if (d.stalled) return ["daemon stalled: inference not returning", "bad"];
  if (d.results_unheard) {
    const u = d.results_unheard;
    return [`daemon up, but none of its ${u.published} results since this page started came from ${endpointName(u.endpoint)}: check the dashboard's --results`, "bad"];
  }
  return d.ready ? ["daemon ready", "ok"] : ["daemon up, not ready", "warn"];
}

// A span of seconds as a person reads it: "40 s", "12 min", "3 h", "20,430 days".
function span(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s >= 172800) return `${Math.round(s / 86400).toLocaleString("en")} days`;
  return s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}

// [text, kind] of several daemons' pill (a plant's lines on one page): the worst of them counted.
function daemonsState(daemons) {
  const count = (test) => daemons.filter(test).length;
  const n = daemons.length;
  const down = count((d) => d.up === false && !d.results_refused), stalled = count((d) => d.up && d.stalled);
  const unheard = count((d) => d.up === null || d.up === undefined);
  const lost = count((d) => d.results_refused || (d.up && !d.stalled && d.results_unheard));
  if (down || stalled || lost) {
    const parts = [down ? `${down} down` : "", stalled ? `${stalled} stalled` : "",
      lost ? `${lost} not heard by this page` : ""].filter(Boolean);
    return [`${parts.join(", ")} of ${n} daemons`, "bad"];
  }
  if (unheard) return [`${unheard} of ${n} daemons not heard from yet`, "warn"];
  const ready = count((d) => d.ready);
  return ready === n ? [`${n} daemons ready`, "ok"] : [`${n - ready} of ${n} daemons up, not ready`, "warn"];
}

// Each daemon's own pill, named by its results endpoint (its host and port), when the page
// follows several.
function drawDaemons(el, daemons) {
  el.hidden = !daemons;
  if (!daemons) return;
  while (el.children.length < daemons.length) el.appendChild(document.createElement("span"));
  while (el.children.length > daemons.length) el.lastChild.remove();
  daemons.forEach((d, i) => {
    const [text, kind] = daemonState(d);
    pill(el.children[i], `${endpointName(d.endpoint)}: ${text.replace(/^daemon:? /, "")}`, kind);
    el.children[i].dataset.endpoint = d.endpoint;
    el.children[i].title = d.vqad_version ? `vqad ${d.vqad_version}` : "";
  });
}

// A daemon named by its results endpoint, less the transport: "line4-box:5556".
function endpointName(endpoint) { return String(endpoint).replace(/^[a-z]+:\/\//, ""); }

// The record's trouble, shown only while there is some: results that will have no row (since
// the daemon started), or a record that has fallen behind the line (its rejects cannot be
// reviewed yet, and a program catching up from the record misses them), with the database's
// last refusal when there is one (a read-only disk, a server gone).
function drawRecordState(el, d) {
  const parts = [];
  if (d.unrecorded) parts.push(`${d.unrecorded} results unrecorded`);
  if (d.record_behind) parts.push(`${Math.round(d.record_behind_s)} s behind`);
  // A damaged SQLite file the daemon set aside: the line records on, and its old rows wait for a person.
  const aside = d.record_set_aside;
  if (aside) parts.push(`damaged file set aside ${when(aside.at_ns)} as ${aside.damaged} (docs/deploy.md, "A damaged record")`);
  el.hidden = parts.length === 0;
  const why = d.record_error ? `: ${d.record_error}` : "";
  if (parts.length) pill(el, `record: ${parts.join(", ")}${why}`, d.unrecorded ? "bad" : "warn");
}

// A daemon's box whose clock reads before a time it has passed (its model package's export, the
// record's newest result), from its heartbeat: the record files the line's results at that
// clock's time, on days the tally of the right days does not show.
function drawClockState(el, d) {
  const c = d.clock;
  el.hidden = !c;
  if (!c) return;
  const box = c.endpoint ? `${endpointName(c.endpoint)}: ` : "";
  pill(el, `${box}the box's clock reads ${day(c.reads)}, ${span(c.behind_s)} before ${c.behind} (${day(c.behind_at)}): `
    + "results are filed at its time", "bad");
}

// Where the serving threshold came from, in a few words: the operator's and the auditor's
// first question about a reject. And what of the frame it judges, when an inspection mask
// leaves a part out: an operator looking at a defect there sees why it passed.
function thresholdSource(src, inspection) {
  const masked = inspection && inspection.mask_sha256
    ? `; ${pct(inspection.inspected_share)} of the frame judged (inspection mask)` : "";
  if (!src) return masked ? `(${masked.slice(2)})` : "";
  if (src.by === "vqad ctl set-threshold") return `(set by ${src.who} ${day(src.at)}: ${src.reason}${masked})`;
  if (!src.calibrated) return src.by ? `(${src.by}${masked})` : "";
  const bound = src.frr_upper_bound_95 === null || src.frr_upper_bound_95 === undefined ? ""
    : `, false rejects ≤ ${pct(src.frr_upper_bound_95)}`;
  return `(${src.by} ${day(src.calibrated)}, ${src.n_images} good images${bound}${masked})`;
}

// Why the camera health gate failed a reject's frame: the record keeps the reasons (`unfit`),
// the live stream carries the gate's verdict (`health`).
function unfitReasons(r) {
  if (r.unfit) return r.unfit;
  return r.health && r.health.ok === false ? (r.health.reasons || []).join(",") || "unfit" : "";
}

function day(iso) { return iso ? String(iso).slice(0, 10) : ""; }

function cameraSection(id) {
  let cam = state.cameras.get(id);
  if (cam) return cam;
  const node = document.getElementById("camera-template").content.firstElementChild.cloneNode(true);
  node.dataset.camera = id;
  $(node, "name").textContent = id;
  document.getElementById("cameras").appendChild(node);
  cam = { node, imageAt: -Infinity, imageFrame: null, galleryAt: 0, galleryFails: -1, galleryTimer: null, galleryNew: 0,
          dailyAt: -Infinity };
  state.cameras.set(id, cam);
  return cam;
}

// The cards stand in the summary's order (by camera id), however late each camera first
// appeared: an operator finds a camera where it was before the page was opened again.
function placeInOrder(ids) {
  const box = document.getElementById("cameras");
  const cards = ids.map((id) => state.cameras.get(id).node);
  const shown = [...box.querySelectorAll(":scope > section.camera")];
  if (cards.every((card, i) => shown[i] === card)) return;
  for (const card of cards) box.appendChild(card);
}

// "1 master part", "4 master parts": the fails of a camera's card and of its tally's days.
function masterParts(n) { return `${n} master part${n > 1 ? "s" : ""}`; }

function drawCamera(id, c, daemon) {
  const cam = cameraSection(id);
  const n = cam.node;
  for (const key of ["frames", "pass", "fail", "error", "dropped"]) setText(n, key, String(c[key]));
  // The master parts' fails are no rejects of the line's: the fail rates beside them leave them out.
  setText(n, "fail-label", c.master_fails ? `fail, ${masterParts(c.master_fails)}` : "fail");
  setText(n, "fail-rate-5min", pct(c.fail_rate_5min));
  setText(n, "fail-rate-1h", pct(c.fail_rate_1h));
  setText(n, "cam-throughput", `${num(c.throughput_per_s, 3)}/s`);
  setText(n, "latency", c.latency_ms ? `${c.latency_ms.p50.toFixed(1)} / ${c.latency_ms.p99.toFixed(1)} ms` : "–");
  const model = c.model ? `${c.model.name || ""} ${(c.model.sha256 || "").slice(0, 12)}` : "";
  // Several daemons on the page: which one serves this camera (its results endpoint).
  const from = daemon.daemons && c.daemon ? ` · from ${endpointName(c.daemon)}` : "";
  setText(n, "model", model + from);
  // Never streamed here: not known to be down; paused: silent, as the line may be while it is.
  const down = c.silent && !c.recorded_only && !c.paused;
  n.classList.toggle("silent", down);
  n.classList.toggle("recorded-only", c.recorded_only);
  const age = lastFrameAge(c);
  if (c.recorded_only) pill($(n, "liveness"), "no frame since the dashboard started: rejects and tally from the record", "warn");
  else pill($(n, "liveness"), down ? `silent: ${age}` : age, down ? "bad" : c.silent ? "warn" : "ok");
  $(n, "paused").hidden = !c.paused;
  n.classList.toggle("paused", Boolean(c.paused));
  const alarm = $(n, "fail-rate-alarm");
  alarm.hidden = !c.fail_rate_alarm;
  n.classList.toggle("fail-rate-alarm", Boolean(c.fail_rate_alarm));
  if (c.fail_rate_alarm) {
    setText(n, "fail-rate-alarm", failRateAlarmText(c.fail_rate_alarm));
    alarm.title = c.fail_rate_alarm.mostly_unfit
      ? "most of this camera's fails are frames the camera health gate found unfit: see to the camera (its light, focus, position)"
      : "far more of this camera's parts fail than the line's usual: see to the process (a tool, the material), then to the camera and its threshold";
  }
  drawMasters($(n, "master-parts"), c.master_parts);
  n.classList.toggle("master-wrong", wrongMasters(c).length > 0);
  drawDrift($(n, "drift"), c.drift, daemon);
  drawLatest(cam, id, c.latest);
  drawRateChart($(n, "rate-chart"), c.fail_rate_series, c.fail_rate_bin_s);
  drawHistogram($(n, "histogram"), c.histogram, c.threshold);
  if (c.fail !== cam.galleryFails) scheduleGallery(cam, id, c.fail);
  if (daemon.record && performance.now() - cam.dailyAt >= DAILY_EVERY_MS) loadDaily(cam, id);
}

// A camera's requests of one kind may be answered out of order (the server takes them side by
// side, and a review asks for the tally and the gallery again at once): an answer drawn after a
// newer one's would put the older figures back until the next refresh. Each request is numbered;
// only the newest one's answer is drawn.
function asking(cam, kind) {
  cam.asked = cam.asked || {};
  cam.asked[kind] = (cam.asked[kind] || 0) + 1;
  const n = cam.asked[kind];
  return () => cam.asked[kind] === n; // still the newest?
}

// -- the record's daily tally -------------------------------------------------------------
async function loadDaily(cam, id) {
  cam.dailyAt = performance.now();
  const newest = asking(cam, "daily");
  try {
    const body = await api(`api/daily?camera=${encodeURIComponent(id)}&days=7`);
    if (!newest()) return;
    const gone = body.removed; // results that have left the record: the days up to it are counted in part
    const rows = body.days.slice().reverse().map((d) => {
      const inPart = gone && d.day <= gone.up_to_day;
      const tr = tableRow([inPart ? `${d.day} (in part)` : d.day, modelCell(d), d.results,
        d.fail, pct(d.fail_rate), d.false_reject, d.defect, d.unreviewed, d.unfit, d.missed, d.master]);
      if (d.mask_sha256) tr.children[1].title = `judged through inspection mask ${d.mask_sha256}`;
      if (d.unreviewed > 0) tr.children[7].replaceChildren(queueButton(cam, id, d));
      // A master part's fail (a red rabbit failed as it must) is no reject of the line's products:
      // without a word, "4 fails" beside a fail rate of 0% and nothing to review reads as an error.
      const masterFails = d.fails ? d.fails.master : 0;
      if (masterFails > 0) {
        tr.children[3].textContent = `${d.fail} (${masterParts(masterFails)})`;
        tr.children[3].title = "master parts' fails are not the line's rejects: the fail rate and the review " +
          "queue leave them out (the master parts column says whether they failed as they must)";
      }
      // A master part the model decided wrongly: the day's proof failed (red); one whose frame it did
      // not judge proves nothing (amber).
      const notRight = [[d.master_wrong, "wrong"], [d.master_unproven, "not judged"]].filter(([n]) => n > 0);
      if (notRight.length) {
        tr.children[10].textContent = `${d.master} (${notRight.map(([n, what]) => `${n} ${what}`).join(", ")})`;
        tr.children[10].classList.add(d.master_wrong > 0 ? "bad" : "warn");
        tr.children[10].title = "master parts decided wrongly, or not judged by the model (a paused camera, an " +
          "unfit frame): vqad records --master-parts lists each";
      }
      if (inPart) tr.title = `results up to ${new Date(gone.up_to_ns / 1e6).toLocaleString()} have left the record ` +
        `(${gone.for_space} for the disk's free space, ${gone.past_keep_days} past record_keep_days); reviewed ones stay`;
      return tr;
    });
    $(cam.node, "daily").replaceChildren(...rows);
    cam.unreviewed = body.days.reduce((n, d) => n + (d.unreviewed || 0), 0); // for its tile
    drawChanges(cam, id, body.changes, body.days);
    const from = body.day_starts === "00:00" ? "" : `, from ${body.day_starts}`;
    setText(cam.node, "daily-day", `day (${body.timezone}${from})`);
    $(cam.node, "daily-box").hidden = false;
    setText(cam.node, "daily-status", performance.now() < (cam.queueSaidUntil || 0) ? cam.queueSaid : "");
  } catch (err) {
    if (newest()) cam.dailyAt = performance.now() - DAILY_EVERY_MS + 5000; // the record is down: try again in 5 s
  }
}

// A daily row's model as `vqad records --daily` writes it: its sha256's start, "+mask" where an
// inspection mask judged its results (a mask set midday gives the day a row before it and one after).
function modelCell(d) {
  return `${(d.model_sha256 || "–").slice(0, 12)}${d.mask_sha256 ? "+mask" : ""}`;
}

// A deploy script that reloads after every copy makes a change an hour: the newest are shown.
const CHANGES_SHOWN = 20;

// The changes made to the daemon in the tally's days (`vqad ctl`, SIGHUP, its starts and stops,
// a start that dropped a kept threshold), newest first: what explains a day whose fail rate
// moved, and when the line was not inspected. Another camera's pause or resume is left to its own section, and so is a change to a model that scored none of
// this camera's results in those days (`days`: its tally's rows): another line's daemon, on a
// record boxes share.
function drawChanges(cam, id, changes, days) {
  const scored = new Set(days.map((d) => d.model_sha256).filter(Boolean));
  const mine = foldRestarts(changes.filter((e) => concerns(e.detail || {}, id, scored)));
  const rows = mine.slice(0, CHANGES_SHOWN).map((e) => {
    const host = e.detail && e.detail.daemon ? ` on ${e.detail.daemon.host}` : ""; // boxes may share a record
    return tableRow([when(e.ts_ns), changeText(e), (e.by || "–") + host]);
  });
  $(cam.node, "changes").replaceChildren(...rows);
  $(cam.node, "changes-table").hidden = rows.length === 0; // no header over nothing
  const more = mine.length - rows.length;
  setText(cam.node, "changes-note", rows.length ? (more ? `and ${more} more: vqad records --daily` : "") : "none");
  $(cam.node, "changes-note").hidden = rows.length > 0 && !more;
}

// The daemon's starts and stops in a row, newest first, as one change when they hold
// RESTARTS_FOLDED starts or more: a restart loop (a thread that fails minutes after each start,
// systemd restarting it every 2 s) filled the table's rows with them, and the threshold set before
// it left the page.
const RESTARTS_FOLDED = 3;
function foldRestarts(changes) {
  const out = [];
  let run = [];
  const flush = () => {
    const starts = run.filter((e) => e.kind === "start");
    if (starts.length < RESTARTS_FOLDED) out.push(...run);
    else {
      const unclean = starts.filter((e) => (e.detail || {}).previous_exit === "unclean").length;
      out.push({ kind: "restarts", ts_ns: run[0].ts_ns, by: run[0].by,
                 detail: { ...run[0].detail, starts: starts.length, unclean, since_ns: run[run.length - 1].ts_ns } });
    }
    run = [];
  };
  for (const e of changes) {
    if (e.kind === "start" || e.kind === "stop") run.push(e);
    else { flush(); out.push(e); }
  }
  flush();
  return out;
}

// Whether a change (its `detail`) concerns camera `id`, whose results the models `scored` (their
// sha256) scored: its own pause or resume, or a change to one of those models; a change that
// names no model (an older vqad's) concerns every camera.
function concerns(detail, id, scored) {
  if (detail.camera) return detail.camera === id;
  const models = [detail.model, detail.from, detail.to].filter((m) => m && typeof m === "object" && m.sha256);
  return models.length === 0 || models.some((m) => scored.has(m.sha256));
}

// A table row of `cells`, each shown as text.
function tableRow(cells) {
  const tr = document.createElement("tr");
  tr.replaceChildren(...cells.map((v) => { const td = document.createElement("td"); td.textContent = String(v); return td; }));
  return tr;
}

// A change in words: the server's (edge.changes, as `vqad records --daily` says it), but for a
// restart loop's starts and stops that the page folds into one (foldRestarts).
function changeText(e) {
  const d = e.detail || {};
  if (e.kind === "restarts") {
    const unclean = d.unclean ? `, ${d.unclean} of them after a run that ended without stopping` : "";
    return `vqad serve started ${d.starts} times since ${when(d.since_ns)}${unclean}: vqad records --daily lists each`;
  }
  return e.said || `${e.kind} ${JSON.stringify(d)}`;
}

// "not reviewed" as a button: it opens the day's fails nobody has reviewed yet, one after
// another, so that the count can be worked down from the page.
function queueButton(cam, id, d) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "queue";
  button.textContent = String(d.unreviewed);
  button.title = `review the ${d.unreviewed} rejects of ${d.day} nobody has reviewed yet`;
  button.onclick = () => openQueue(cam, id, d);
  return button;
}

async function openQueue(cam, id, d) {
  // The row's own results: its model's, through its mask or through none.
  const model = (d.model_sha256 ? `&model=${encodeURIComponent(d.model_sha256)}` : "") +
    `&mask=${encodeURIComponent(d.mask_sha256 || "none")}`;
  sayOfQueue(cam, "");
  try {
    const body = await api(`api/results?camera=${encodeURIComponent(id)}&decision=fail&reviewed=false` +
      `&day=${encodeURIComponent(d.day)}${model}&limit=${QUEUE_SIZE}`);
    if (!body.results.length) { // reviewed meanwhile (another screen): said, and the tally catches up
      sayOfQueue(cam, `none of ${d.day}'s rejects is left to review: reviewed meanwhile`);
      loadDaily(cam, id);
      return;
    }
    openDetail(body.results[0], body.results, { camera: id, day: d.day, more: body.limit_reached });
  } catch (err) {
    sayOfQueue(cam, `the day's rejects could not be read: ${err.message}`);
  }
}

// What a click on "not reviewed" came to, under the tally for a minute (DAILY_EVERY_MS): the
// tally's refresh, which the click itself may start, must not take it away before it is read.
function sayOfQueue(cam, text) {
  cam.queueSaid = text;
  cam.queueSaidUntil = performance.now() + DAILY_EVERY_MS;
  setText(cam.node, "daily-status", text);
}

// Whether master part check `m` was made on the model and threshold its daemon serves now (the
// server's `proves_now`): a check proves the inspection it was made on, not one reloaded or set since.
function provesNow(m) { return m.proves_now !== false; }

// The camera's master parts: green while each one's latest check got its verdict; red while one
// did not, until that master part gets it again (the parts since its last right check are suspect);
// amber while none was run on the model and threshold served now.
function drawMasters(el, masters) {
  el.hidden = !masters;
  if (!masters) return;
  // when (who named the frame that master part, vqad ctl master, is in its words)
  const time = (m) => new Date(m.ts_ns / 1e6).toLocaleTimeString();
  const wrong = wrongMasters({ master_parts: masters }), unjudgedChecks = unjudgedMasters({ master_parts: masters });
  const now = masters.filter(provesNow);
  const latest = (checks) => checks.reduce((a, b) => (b.ts_ns > a.ts_ns ? b : a));
  if (wrong.length || unjudgedChecks.length) {
    const [checks, like, kind] = wrong.length ? [wrong, "wrong", "bad"] : [unjudgedChecks, "not judged", "warn"];
    pill(el, `${masterText(checks[0])} (${time(checks[0])})${moreLike(checks, like)}`, kind);
    el.title = masterWrongWhy(checks[0]);
  } else if (!now.length) {
    const last = latest(masters);
    pill(el, `master parts not run since the model, threshold or inspection mask changed (the last at ${time(last)}, ` +
      `threshold ${num(last.threshold)})`, "warn");
    el.title = "each master part's check proves the model, threshold and inspection mask it was made on: run them again";
  } else {
    const before = masters.length - now.length;
    pill(el, `master parts right: ${now.length}, the latest at ${time(latest(now))}` +
      (before ? ` (${before} more before the model, threshold or inspection mask changed)` : ""), "ok");
    el.title = masters.map((m) => `${masterText(m)} (${time(m)})${provesNow(m) ? "" : ", on the model, threshold or inspection mask before"}`).join("\n");
  }
}

function drawDrift(el, drift, daemon) {
  if (!drift) {
    // The alarm is read from the daemon's metrics: without them it is never measured here.
    const why = !daemon.metrics ? "drift: not shown (no --metrics)" : daemon.up ? "drift: not measured yet" : "drift: unknown";
    pill(el, why, "");
    if (!daemon.metrics) el.title = "the drift alarm is read from the daemon's Prometheus endpoint: start the dashboard with --metrics URL";
    return;
  }
  pill(el, drift.alarm ? `DRIFT (KS ${num(drift.ks, 3)})` : `no drift (KS ${num(drift.ks, 3)})`, drift.alarm ? "bad" : "ok");
}

function drawLatest(cam, id, latest) {
  $(cam.node, "latest-image").closest("figure").hidden = !latest; // a camera known from the record alone
  if (!latest) return;
  const unfit = unfitReasons(latest);
  const why = unfit ? ` (camera unfit: ${unfit})` : "";
  const caption = `#${latest.frame_id} ${(latest.decision || latest.status).toUpperCase()}${why} score ${num(latest.score)} at ${when(latest.ts_ns)}`;
  setText(cam.node, "latest-caption", caption);
  const now = performance.now();
  if (latest.frame_id === cam.imageFrame || now - cam.imageAt < IMAGE_EVERY_MS) return;
  cam.imageAt = now;
  cam.imageFrame = latest.frame_id;
  if (latest.frame_shape) frameShapes.set(id, latest.frame_shape);
  const image = fitBox($(cam.node, "latest-image"), latest.frame_shape, LATEST_SIDE);
  image.src = `api/image/${encodeURIComponent(id)}/latest/overlay?f=${latest.frame_id}`;
}

// -- charts (plain canvas) ------------------------------------------------------------------
function canvasContext(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px system-ui";
  ctx.fillStyle = "#8a949e";
  ctx.textAlign = "left";
  return ctx;
}

// A label that ends `right` pixels from the canvas's right edge, however long its number is.
function labelAtRight(ctx, text, right, y) {
  ctx.textAlign = "right";
  ctx.fillText(text, ctx.canvas.width - right, y);
  ctx.textAlign = "left";
}

// Two points more than a bin and a half apart (`binS`, the summary's fail_rate_bin_s) have bins
// without a decided result between them (no frames: a line stopped, a daemon down): they are not
// joined, so that a gap does not read as a slope from one rate to the other.
function drawRateChart(canvas, series, binS) {
  const ctx = canvasContext(canvas);
  const w = canvas.width, h = canvas.height, pad = 24;
  const top = Math.max(0.05, ...series.map((p) => p[1]));
  ctx.fillText(`${(100 * top).toFixed(0)}%`, 2, 12);
  ctx.fillText("-60 min", pad, h - 4);
  labelAtRight(ctx, "now", 4, h - 4);
  const points = series.map(([ago, rate]) => [pad + (w - pad - 4) * (1 - ago / 3600), h - pad - (h - pad - 8) * (rate / top)]);
  ctx.strokeStyle = "#f85149";
  ctx.fillStyle = "#f85149";
  ctx.beginPath();
  const apart = (i) => i === 0 || series[i - 1][0] - series[i][0] > 1.5 * binS;
  points.forEach(([x, y], i) => (apart(i) ? ctx.moveTo(x, y) : ctx.lineTo(x, y)));
  ctx.stroke();
  for (const [x, y] of points) ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
}

function drawHistogram(canvas, hist, threshold) {
  const ctx = canvasContext(canvas);
  const w = canvas.width, h = canvas.height, pad = 18;
  if (!hist.counts.length) { ctx.fillText("no scores yet", 8, 20); return; }
  const top = Math.max(...hist.counts), span = hist.edges[hist.edges.length - 1];
  const bw = (w - 8) / hist.counts.length;
  hist.counts.forEach((count, i) => {
    const bh = (h - pad - 20) * (count / top); // the top 20 px are the threshold's label's
    ctx.fillStyle = hist.edges[i] >= threshold ? "#f85149" : "#3fb950";
    ctx.fillRect(4 + i * bw, h - pad - bh, Math.max(1, bw - 1), bh);
  });
  const x = 4 + (w - 8) * (threshold / span);
  ctx.strokeStyle = "#e6e9ec";
  ctx.setLineDash([4, 3]);
  ctx.beginPath(); ctx.moveTo(x, 4); ctx.lineTo(x, h - pad); ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = "#8a949e";
  ctx.fillText("0", 4, h - 4);
  labelAtRight(ctx, num(span, 3), 4, h - 4);
  const label = `threshold ${num(threshold, 3)}`;
  ctx.fillText(label, Math.min(x + 4, w - 4 - ctx.measureText(label).width), 14);
}

// -- rejects ------------------------------------------------------------------------------
function scheduleGallery(cam, id, fails) {
  if (cam.galleryTimer) return;
  const every = cam.galleryNew > STORM_TILES ? STORM_EVERY_MS : GALLERY_EVERY_MS;
  const wait = Math.max(0, every - (performance.now() - cam.galleryAt));
  cam.galleryTimer = setTimeout(() => loadGallery(cam, id, fails), wait);
}

async function loadGallery(cam, id, fails) {
  cam.galleryTimer = null;
  cam.galleryAt = performance.now();
  window.vqadStats.galleryFetches += 1;
  const newest = asking(cam, "gallery");
  try {
    const body = await api(`api/rejects?camera=${encodeURIComponent(id)}&limit=${GALLERY_SIZE}`);
    if (!newest()) return;
    cam.galleryFails = fails;
    cam.galleryNew = drawGallery($(cam.node, "gallery"), body.rejects);
    // Rejects not in the record yet (its writer commits every half second): look again soon; not
    // for one that its ended run never recorded, which a look again would ask for all day.
    if (body.record && body.rejects.some((r) => !r.recorded && !r.unrecordable)) scheduleGallery(cam, id, fails);
  } catch (err) {
    if (newest()) setText(cam.node, "gallery", `rejects unavailable: ${err.message}`);
  }
}

// A reject's tile: its frame id and time, since a sender that starts its ids again sends a
// frame id twice.
const tileKey = (r) => `${r.frame_id}@${r.ts_ns}`;

// A tile is made once per reject and kept while it stays in the gallery: its picture is
// fetched once, however often the gallery refreshes. -> how many tiles are new.
function drawGallery(gallery, rejects) {
  const kept = new Map([...gallery.querySelectorAll(".reject")].map((b) => [b.dataset.key, b]));
  const tiles = rejects.map((r) => {
    const tile = kept.get(tileKey(r)) || newTile(r);
    tile.onclick = opener(r, rejects);
    const verdict = r.reviews.length ? r.reviews[r.reviews.length - 1].verdict.replace("_", " ") : "";
    // A reject its ended run never recorded is known as such only later, once the daemon's next
    // run beats: its tile says so from then on.
    tile.querySelector(".reviewed").textContent = verdict || (r.unrecordable ? "not recorded" : "");
    tile.title = r.unrecordable || "";
    tile.classList.toggle("unrecordable", Boolean(r.unrecordable));
    return tile;
  });
  if (!tiles.length) { gallery.textContent = "none"; return 0; }
  if (tiles.length !== kept.size || tiles.some((t, i) => gallery.children[i] !== t)) gallery.replaceChildren(...tiles);
  return rejects.filter((r) => !kept.has(tileKey(r))).length;
}

// A tile's click handler, made outside drawGallery: a closure made inside it would keep
// drawGallery's scope, whose `kept` holds the tiles it replaced, and through their handlers the
// tiles before them; a page open for a day held every tile it had ever drawn (40 DOM nodes a
// second in a storm of rejects).
function opener(r, list) {
  return () => openDetail(r, list, null);
}

function newTile(r) {
  const tile = document.createElement("button");
  tile.className = "reject";
  tile.type = "button";
  tile.dataset.frameId = r.frame_id;
  tile.dataset.key = tileKey(r);
  const caption = document.createElement("span");
  const unfit = unfitReasons(r) ? " unfit" : ""; // failed by the camera health gate, whatever its score
  const master = r.master ? " master" : ""; // a part of known verdict, run to prove the inspection: no review
  caption.textContent = (r.part_id ? `${r.part_id} ${num(r.score)}` : `#${r.frame_id} ${num(r.score)}`) + unfit + master;
  const reviewed = document.createElement("span");
  reviewed.className = "reviewed";
  tile.append(tilePicture(r), caption, reviewed);
  return tile;
}

// A tile's picture: its overlay, else its frame; grey while it loads; where none is kept (the
// evidence quota removed it, or the stream carries neither), a note that says so. Each is of
// about TILE_SIDE² pixels in its frame's shape: the result's, else its camera's latest (the
// record keeps none), and once loaded the picture's own.
function tilePicture(r) {
  const url = r.images.overlay || r.images.frame;
  const shape = r.frame_shape || frameShapes.get(r.camera_id);
  if (!url) {
    const note = document.createElement("span");
    note.className = "no-image";
    note.textContent = "no picture kept";
    return fitBox(note, shape, TILE_SIDE);
  }
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = `frame ${r.frame_id}`;
  img.className = "loading";
  img.onload = () => {
    img.classList.remove("loading");
    fitBox(img, [img.naturalHeight, img.naturalWidth], TILE_SIDE);
  };
  img.onerror = () => img.replaceWith(fitBox(pictureMissing(img.src, "no-image"), shape, TILE_SIDE));
  img.src = url;
  return fitBox(img, shape, TILE_SIDE);
}

// `node` sized to about side² pixels in the shape [h, w] of its frame (a square when unknown): a
// tall part, or a line-scan strip of 64 × 1024, fills its box, where a square box showed it as
// a sliver between black bars. Past 16:1 the box stays 4 sides long and the picture is letterboxed.
function fitBox(node, shape, side) {
  const [h, w] = shape && shape[0] > 0 && shape[1] > 0 ? shape : [1, 1];
  const stretch = Math.sqrt(Math.min(16, Math.max(1 / 16, w / h)));
  node.style.width = `${Math.round(side * stretch)}px`;
  node.style.height = `${Math.round(side / stretch)}px`;
  return node;
}

// In place of a picture that does not load, why: the API's answer for it ("the evidence was
// removed by the disk quota"; "not on this machine's disk: PATH" on a record that boxes share,
// each keeping its images on its own disk).
function pictureMissing(url, className) {
  const note = document.createElement("span");
  note.className = className;
  note.textContent = "no picture";
  fetch(url).then((response) => response.json()).then((body) => { if (body.error) note.textContent = body.error; })
    .catch(() => {});
  return note;
}

// The detail of reject `r`; `list` is the gallery it was opened from, or the day's unreviewed
// rejects (`queue`), newest first, which the arrow keys (or the newer / older buttons) walk
// through, so a person reviews one after another.
function openDetail(r, list = [r], queue = state.queue) {
  state.open = r;
  state.ignored = []; // measured on another frame, perhaps another camera's
  showIgnored();
  state.openList = list;
  state.queue = queue;
  const overlay = document.getElementById("detail-overlay");
  const mapped = document.getElementById("detail-mapped"); // the overlay and its caption
  mapped.hidden = !r.images.overlay; // removed by the disk quota
  overlay.onload = () => fitDetailImages(r);
  const missing = document.getElementById("detail-missing");
  missing.textContent = r.images.overlay || r.images.frame ? "" : "No picture is kept of it (removed by the evidence quota, or never stored).";
  const notLoaded = (img, figure) => () => { figure.hidden = true; missing.replaceChildren(pictureMissing(img.src, "")); };
  overlay.onerror = notLoaded(overlay, mapped);
  if (r.images.overlay) overlay.src = r.images.overlay;
  else overlay.removeAttribute("src"); // never the previous reject's picture
  document.getElementById("detail-overlay-full").href = r.images.overlay || "";
  const frame = document.getElementById("detail-frame");
  const framed = document.getElementById("detail-framed"); // the frame, its regions and caption
  framed.hidden = !r.images.frame;
  document.getElementById("detail-regions").replaceChildren();
  frame.onload = () => fitDetailImages(r);
  frame.onerror = notLoaded(frame, framed);
  if (r.images.frame) frame.src = r.images.frame;
  else frame.removeAttribute("src");
  document.getElementById("detail-frame-full").href = r.images.frame || ""; // a speck, seen at the camera's pixels
  const rows = [
    ["camera", r.camera_id], ["frame", r.frame_id],
    ["part", r.part_id ? `${r.part_id}${r.master ? ` (a master part: it must ${r.master})` : ""}` : "–"],
    ["time", when(r.ts_ns)],
    ["decision", r.status === "ok" || !r.status ? r.decision || "–" : `${r.status}: ${r.error || ""}`],
    ["score", `${num(r.score, 6)} (threshold ${num(r.threshold, 6)})`],
    ["camera health", unfitReasons(r) ? `unfit: ${unfitReasons(r)} (failed whatever its score)` : "no fault found"],
    ["model", r.model ? `${r.model.name || ""} ${r.model.sha256 || ""}${inspectionMask(r.model)}` : "–"],
    // As `vqad calibrate --ignore` takes one: a date code's region, left out of the decision.
    ["regions X,Y,W,H", (r.regions || []).map((g) => `${g.x},${g.y},${g.w},${g.h} (peak ${num(g.peak, 3)})`).join("; ") || "none"],
    ["reviews", r.reviews.map((v) => `${v.verdict}${v.kind ? ` (${v.kind})` : ""} by ${v.reviewer || "?"}`).join("; ") || "none"],
  ];
  // A row its own run did not commit: an audit reads why its images may be missing.
  if (r.recovered_ns) rows.push(["recorded", `put back from its run's journal ${when(r.recovered_ns)}`]);
  const meta = document.getElementById("detail-meta");
  meta.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    return [dt, dd];
  }));
  // A fresh reject may reach the record a moment after the stream: the record answers for it.
  const record = state.summary ? state.summary.daemon : {};
  // A master part's verdict is known: reviewed as a false reject, a red rabbit would be exported
  // to train on as good (the record refuses such a review too).
  const canReview = Boolean(record.record && !record.record_read_only && !r.master && !r.unrecordable);
  for (const id of ["review-false-reject", "review-defect"]) document.getElementById(id).disabled = !canReview;
  document.getElementById("review-status").textContent = canReview ? ""
    : r.master ? `A master part's verdict is known (it must ${r.master}): it is not reviewed.`
    : r.unrecordable ? `Not in the record: ${r.unrecordable}.`
    : record.record_read_only ? "This record cannot be written here (a read-only disk or medium): it is read, not reviewed."
    : "Reviews need the line's record (vqad dashboard --record URL).";
  const at = list.indexOf(r);
  const where = !queue ? "" : "part" in queue ? `part ${queue.part}: ` : `not reviewed, ${queue.camera} ${queue.day}: `;
  document.getElementById("detail-position").textContent =
    `${where}${at + 1} of ${list.length}${queue && queue.more ? "+" : ""}`;
  document.getElementById("detail-newer").disabled = at <= 0;
  document.getElementById("detail-older").disabled = at < 0 || at >= list.length - 1;
  const dialog = document.getElementById("detail");
  if (!dialog.open) dialog.showModal();
}

function stepDetail(by) {
  const list = state.openList || [];
  const next = list[list.indexOf(state.open) + by];
  if (next) openDetail(next, list);
}

// The heat map (at the model's size, or the frame's) and the frame (at its own) are shown at one
// height, each in its own proportions, so that they compare at a glance: as tall as half the
// window, and each at most 45% of its width. A tall part's pictures (a commutator, 2.5 times as
// tall as wide, was 170 px wide above its details) stand beside the details instead, as tall as
// the window leaves room for, on a window wide enough. Fitted again as each loads; the regions follow.
function fitDetailImages(r) {
  const overlay = document.getElementById("detail-overlay"), frame = document.getElementById("detail-frame");
  const mapped = !document.getElementById("detail-mapped").hidden;
  const framed = !document.getElementById("detail-framed").hidden;
  const shown = [[overlay, mapped], [frame, framed]].filter(([i, on]) => on && i.complete && i.naturalWidth)
    .map(([i]) => i);
  const tall = shown.length > 0 && shown.every((i) => i.naturalHeight > TALL_PICTURE * i.naturalWidth);
  const beside = tall && window.innerWidth >= BESIDE_MIN_WIDTH;
  document.getElementById("detail-body").classList.toggle("beside", beside);
  // Beside: the dialog's margins, the close button and the captions take about 9 rem of the height.
  let height = beside ? window.innerHeight - 9 * REM : Math.min(0.5 * window.innerHeight, 480);
  const share = beside ? 0.3 : 0.45; // of the window's width, each picture (beside: the details take the rest)
  for (const i of shown) height = Math.min(height, (share * window.innerWidth * i.naturalHeight) / i.naturalWidth);
  for (const i of shown) {
    i.style.height = `${Math.round(height)}px`;
    i.style.width = `${Math.round((height * i.naturalWidth) / i.naturalHeight)}px`;
  }
  if (shown.includes(frame)) {
    drawRegions(frame, r);
    showIgnored();
  }
}

// The inspection mask a result was judged through, after its model: an audit's "what decided it".
function inspectionMask(model) {
  return model.mask_sha256 ? `, through inspection mask ${model.mask_sha256.slice(0, 12)}…` : "";
}

// The frame's own size and its scale as shown -> [sx, sy, fw, fh]: the record keeps the frame as
// received; the stream's picture is at the model's size, and the result names the frame's.
function frameScale(img, r) {
  const [fh, fw] = r.frame_shape || [img.naturalHeight, img.naturalWidth];
  return [img.clientWidth / fw, img.clientHeight / fh, fw, fh];
}

// A box over the frame as shown, of a rectangle {x, y, w, h} in CSS pixels.
function cssBox(c, className) {
  const box = document.createElement("div");
  box.className = className;
  Object.assign(box.style, { left: `${c.x}px`, top: `${c.y}px`, width: `${c.w}px`, height: `${c.h}px` });
  return box;
}

// A box over the frame as shown, of a rectangle {x, y, w, h} in the frame's own pixels.
function frameBox(img, r, g, className) {
  const [sx, sy] = frameScale(img, r);
  return cssBox({ x: g.x * sx, y: g.y * sy, w: g.w * sx, h: g.h * sy }, className);
}

// The regions are in the frame's own pixels: boxes over the frame as shown, at its scale.
function drawRegions(img, r) {
  document.getElementById("detail-regions").replaceChildren(...(r.regions || []).map((g) => frameBox(img, r, g, "region")));
}

// -- a part of the frame to leave out --------------------------------------------------------
// A date code or a label that fails good parts: the quality engineer drags over it on the frame,
// and the dialog gives it in the frame's pixels as `vqad calibrate --ignore` takes it
// (docs/threshold.md), with the command. The page sets nothing: the mask and the threshold are
// set together, on good images, by that command.
const MIN_DRAG_PX = 3; // a shorter drag is a click

function measureIgnored() {
  const framed = document.querySelector("#detail-framed .framed"), frame = document.getElementById("detail-frame");
  let start = null;
  const at = (event) => {
    const box = frame.getBoundingClientRect();
    return [Math.min(Math.max(event.clientX - box.left, 0), box.width), Math.min(Math.max(event.clientY - box.top, 0), box.height)];
  };
  framed.addEventListener("pointerdown", (event) => {
    if (!state.open || !frame.naturalWidth) return;
    event.preventDefault();
    framed.setPointerCapture(event.pointerId);
    start = at(event);
  });
  framed.addEventListener("pointermove", (event) => { if (start) showIgnored(cssRectangle(start, at(event))); });
  framed.addEventListener("pointerup", (event) => {
    if (!start) return;
    const drawn = cssRectangle(start, at(event));
    start = null;
    const g = drawn.w >= MIN_DRAG_PX && drawn.h >= MIN_DRAG_PX ? toFramePixels(frame, state.open, drawn) : null;
    if (g) state.ignored.push(g);
    showIgnored();
  });
  framed.addEventListener("pointercancel", () => { start = null; showIgnored(); }); // the browser took the pointer
  document.getElementById("detail-ignore-clear").addEventListener("click", () => { state.ignored = []; showIgnored(); });
}

function cssRectangle([x0, y0], [x1, y1]) {
  return { x: Math.min(x0, x1), y: Math.min(y0, y1), w: Math.abs(x1 - x0), h: Math.abs(y1 - y0) };
}

// A rectangle over the frame as shown -> {x, y, w, h} in its own pixels, every pixel it touches;
// null for one of no pixel.
function toFramePixels(img, r, c) {
  const [sx, sy, fw, fh] = frameScale(img, r);
  const x = Math.max(0, Math.floor(c.x / sx)), y = Math.max(0, Math.floor(c.y / sy));
  const w = Math.min(fw, Math.ceil((c.x + c.w) / sx)) - x, h = Math.min(fh, Math.ceil((c.y + c.h) / sy)) - y;
  return w > 0 && h > 0 ? { x, y, w, h } : null;
}

// The rectangles measured on this reject's frame (and the one being dragged, in CSS pixels), and
// the command that leaves them out.
function showIgnored(dragging = null) {
  const frame = document.getElementById("detail-frame"), r = state.open;
  // With the rectangles its mask leaves out already, which the command repeats: the whole mask it sets.
  const [kept, note] = state.ignored.length && r ? maskKept(r, frame) : [[], ""];
  const shown = [...kept.map((g) => [g, "ignore-box kept"]), ...state.ignored.map((g) => [g, "ignore-box"])];
  const boxes = r && frame.naturalWidth ? shown.map(([g, className]) => frameBox(frame, r, g, className)) : [];
  if (dragging) boxes.push(cssBox(dragging, "ignore-box"));
  document.getElementById("detail-ignored").replaceChildren(...boxes);
  const flags = [...kept, ...state.ignored].map((g) => `--ignore ${g.x},${g.y},${g.w},${g.h}`).join(" ");
  document.getElementById("detail-ignore").hidden = !state.ignored.length;
  document.getElementById("detail-ignore-command").textContent = `vqad calibrate ${packageDir(r)} GOOD_DIR ${flags}`;
  document.getElementById("detail-ignore-note").textContent = note;
}

// How each inspection mask the daemons serve was given (the heartbeat's `inspection.given`), kept
// by its sha256 for as long as the page is open: a reject judged through a mask served before a
// reload still finds it.
function learnMasks(daemon) {
  for (const d of eachDaemon(daemon)) {
    const i = d.inspection;
    if (i && i.mask_sha256 && i.given) state.masks.set(i.mask_sha256, i.given);
  }
}

// The folder each model is served from (the heartbeat's `model_dir`), kept by the model's sha256.
function learnPackages(daemon) {
  for (const d of eachDaemon(daemon)) {
    if (d.model_sha256 && d.model_dir) state.packages.set(d.model_sha256, d.model_dir);
  }
}

// The summary's daemon and, on a page that follows several, each of theirs (`daemons`).
function eachDaemon(daemon) {
  return [daemon, ...((daemon && daemon.daemons) || [])].filter(Boolean);
}

// The folder of the package that judged reject `r`, on its daemon's machine, for the command that
// sets its mask; MODEL_DIR where no heartbeat on this page has named it (an older daemon, a model
// no longer served). A path with a space or a quote is quoted for a POSIX shell.
function packageDir(r) {
  const dir = r && r.model && state.packages.get(r.model.sha256);
  if (!dir) return "MODEL_DIR";
  return /^[\w@%+=:,./-]+$/.test(dir) ? dir : `'${dir.replace(/'/g, "'\\''")}'`;
}

// `vqad calibrate --ignore` sets the package's whole mask: a command that adds a rectangle to the
// mask reject `r` was judged through repeats that mask's rectangles first. -> [those rectangles,
// a note where they cannot be repeated].
function maskKept(r, frame) {
  const sha = r.model && r.model.mask_sha256;
  if (!sha) return [[], ""];
  const given = state.masks.get(sha);
  const [, , fw, fh] = frameScale(frame, r);
  if (given && given.rectangles && given.frame[0] === fh && given.frame[1] === fw) {
    const n = given.rectangles.length;
    const kept = given.rectangles.map(([x, y, w, h]) => ({ x, y, w, h }));
    return [kept, `(the first ${n === 1 ? "is the rectangle" : `${n} are the rectangles`} its inspection mask leaves out already)`];
  }
  if (given && given.rectangles) {
    return [[], `(its inspection mask's rectangles are in ${given.frame[1]}x${given.frame[0]} frames, this frame is ` +
      `${fw}x${fh}: the command replaces that mask, so give its rectangles too, as vqad info ${packageDir(r)} lists them)`];
  }
  if (given) return [[], "(its inspection mask was given as an image, which this command replaces: draw these into that image and give it with --mask instead)"];
  return [[], `(the command replaces its inspection mask: give the rectangles that mask leaves out too, as vqad info ${packageDir(r)} lists them)`];
}

// -- a part's results ------------------------------------------------------------------------
// A part's id typed or scanned: its results open in the detail, newest first, passes too. A pass
// a customer found defective is reviewed there as a defect: a miss, kept for the next training.
async function findPart(event) {
  event.preventDefault();
  const part = document.getElementById("part-query").value.trim();
  const status = document.getElementById("part-status");
  if (!part) { status.textContent = ""; return; }
  status.textContent = "…";
  try {
    const [answer, streamed] = await Promise.all([
      api(`api/results?part_id=${encodeURIComponent(part)}&limit=${PART_RESULTS}`),
      api(`api/rejects?limit=${STREAMED_REJECTS}`).catch(() => ({ rejects: [] })), // the record's answer decides
    ]);
    // Its rejects the stream brought and the record does not hold: not yet, or never (a run
    // killed before its writer committed them), said so in their dialog.
    const unrecorded = streamed.rejects.filter((r) => !r.recorded && r.part_id === part);
    const found = [...answer.results, ...unrecorded].sort((a, b) => b.ts_ns - a.ts_ns);
    if (!found.length) { status.textContent = `no result for part ${part}`; return; }
    const notIn = unrecorded.length ? ` (${unrecorded.length} not in the record)` : "";
    status.textContent = `${found.length}${answer.limit_reached ? "+" : ""} result${found.length > 1 ? "s" : ""}${notIn}`;
    openDetail(found[0], found, { part, more: answer.limit_reached });
  } catch (err) {
    status.textContent = `part ${part}: ${err.message}`;
  }
}

async function review(verdict) {
  const r = state.open;
  const by = document.getElementById("review-by").value.trim();
  localStorage.setItem("vqad-reviewer", by);
  const body = {
    camera_id: r.camera_id, frame_id: r.frame_id, result_id: r.result_id ?? null, verdict, by,
    kind: verdict === "defect" ? document.getElementById("review-kind").value.trim() : "",
    note: document.getElementById("review-note").value.trim(),
    // The newest review shown: one another person records meanwhile is shown, not overwritten unseen.
    after_review_id: r.reviews.length ? r.reviews[r.reviews.length - 1].id : 0,
  };
  const status = document.getElementById("review-status");
  try {
    const answer = await api("api/review", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(body) });
    r.reviews = [...r.reviews, answer.review]; // shown as reviewed when the arrows come back to it
    const done = `Recorded: ${verdict.replace("_", " ")} of frame ${r.frame_id}.`;
    const cam = state.cameras.get(r.camera_id);
    if (cam) loadGallery(cam, r.camera_id, cam.galleryFails);
    // A part's results are not a queue: each is reviewed where it stands.
    if (!state.queue || "part" in state.queue || state.open !== r) { status.textContent = done; return; }
    // Walking a day's unreviewed rejects: on to the next, and the tally counts the review.
    const list = state.openList, next = list[list.indexOf(r) + 1];
    if (cam) loadDaily(cam, r.camera_id);
    const left = list.filter((x) => !x.reviews.length).length;
    if (next) openDetail(next, list);
    status.textContent = next
      ? `${done} ${left}${state.queue.more ? "+" : ""} left.`
      : `${done} That was the last of the day's unreviewed rejects${left ? ` but ${left} skipped` : ""}.`;
  } catch (err) {
    if (err.status === 412 && state.open === r) { // reviewed since it was shown: its reviews now, and why
      r.reviews = [...r.reviews, ...err.body.reviews];
      openDetail(r, state.openList);
    }
    document.getElementById("review-status").textContent = `Not recorded: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("review-by").value = localStorage.getItem("vqad-reviewer") || "";
  document.getElementById("review-false-reject").addEventListener("click", () => review("false_reject"));
  document.getElementById("review-defect").addEventListener("click", () => review("defect"));
  document.getElementById("detail-newer").addEventListener("click", () => stepDetail(-1));
  document.getElementById("detail-older").addEventListener("click", () => stepDetail(1));
  document.getElementById("part-search").addEventListener("submit", findPart);
  measureIgnored();
  document.getElementById("detail").addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT") return; // typing a kind or a note
    if (event.key === "ArrowLeft") stepDetail(-1);
    else if (event.key === "ArrowRight") stepDetail(1);
    // The verdicts from the keyboard, as their buttons (disabled without a record): a queue of a
    // shift's rejects is worked through with one key each.
    else if (event.key === "f" || event.key === "d") {
      const button = document.getElementById(event.key === "f" ? "review-false-reject" : "review-defect");
      if (!button.disabled) button.click();
    }
  });
  connect();
});
