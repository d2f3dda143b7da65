// The vidrec page: plain JavaScript over the service's own endpoints (same origin) and the
// /ui/api/* helpers. Every value from the server goes into the page as text, never as HTML.
"use strict";

const base = document.body.dataset.base;
const maxK = Number(document.body.dataset.maxK);
const sessionId = "ui-" + randomHex(8);
const videos = new Map(); // video_id -> {title, genres, duration_s}: fetched once per id
let shown = null; // the answer on screen: {request, answer}

function $(id) {
  return document.getElementById(id);
}

function randomHex(bytes) {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// ---- talking to the server ----------------------------------------------------------------------

// The client key, when the service asks for one (the field is there only then); kept for the
// browser tab's session only.
function apiKey() {
  const field = $("api-key");
  if (!field) return "";
  if (field.value) sessionStorage.setItem("vidrec-api-key", field.value);
  else field.value = sessionStorage.getItem("vidrec-api-key") || "";
  return field.value;
}

async function call(path, body) {
  const headers = body === undefined ? {} : { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const options = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    return { ok: false, status: 0, data: { error: "the service cannot be reached: " + err.message } };
  }
  const text = await response.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = { error: text.slice(0, 300) || response.statusText };
  }
  return { ok: response.ok, status: response.status, data };
}

// A readable sentence for an error answer: the fields and messages of a 400 (BentoML answers
// {"error": "N validation error for ...", "detail": "k: ...", "errors": [{loc, msg}, ...]}), the reason of a 503.
function explain(result, what) {
  const data = result.data || {};
  const message = typeof data.error === "string" ? data.error : JSON.stringify(data);
  if (result.status === 400) {
    const errors = Array.isArray(data.errors) ? data.errors : Array.isArray(data.detail) ? data.detail : null;
    const fields = errors
      ? errors.map((d) => (d.loc || []).filter((part) => part !== "body").join(".") + ": " + d.msg).join("; ")
      : message;
    return what + " was refused (400): " + fields;
  }
  if (result.status === 401 || result.status === 403) return what + " was refused (" + result.status + "): " + message;
  if (result.status === 429) return what + ": too many requests (429): " + message;
  if (result.status === 503) return what + ": the service is unavailable right now (503): " + message;
  if (result.status === 0) return what + ": " + message;
  return what + " failed (" + result.status + "): " + message;
}

function showBanner(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = false;
}

function clearBanner() {
  $("banner").hidden = true;
  $("banner").textContent = "";
}

async function ensureVideos(ids) {
  const missing = ids.filter((id) => !videos.has(id));
  if (!missing.length) return;
  const result = await call(base + "/api/videos?ids=" + missing.map(encodeURIComponent).join(","));
  if (!result.ok) return; // cards still show ids
  for (const [id, info] of Object.entries(result.data.videos)) videos.set(id, info);
}

function titleOf(id) {
  return videos.has(id) ? videos.get(id).title : "video " + id;
}

// ---- the query form -----------------------------------------------------------------------------

let userTimer = null;

function suggestUsers() {
  clearTimeout(userTimer);
  userTimer = setTimeout(async () => {
    const result = await call(base + "/api/users?limit=20&q=" + encodeURIComponent($("user").value.trim()));
    if (!result.ok) return;
    const list = $("user-options");
    list.replaceChildren(...result.data.users.map((id) => {
      const option = document.createElement("option");
      option.value = id;
      return option;
    }));
  }, 200);
}

function setNow() {
  const now = new Date();
  now.setSeconds(0, 0);
  $("when").value = new Date(now.getTime() - now.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function readRequest() {
  const userId = $("user").value.trim();
  if (!userId) return { error: "Type a user id (or press New visitor) first." };
  const rawK = $("k").value.trim();
  const k = Number(rawK);
  if (rawK === "" || !Number.isInteger(k)) {
    return { error: "k must be a whole number from 1 to " + maxK + ", got '" + rawK + "'." };
  }
  const when = $("when").value;
  const context = { device: $("device").value };
  if (when) context.timestamp = new Date(when).toISOString();
  return { user_id: userId, k, context };
}

async function submit(event) {
  event.preventDefault();
  clearBanner();
  const request = readRequest();
  if (request.error) {
    showBanner(request.error);
    return;
  }
  const sameUser = shown && shown.request.user_id === request.user_id;
  await Promise.all([showHistory(request.user_id), recommend(request, sameUser ? shown.answer : null)]);
}

// ---- recommendations ----------------------------------------------------------------------------

async function recommend(request, previous) {
  const region = $("recs-region");
  region.setAttribute("aria-busy", "true");
  const result = await call("/recommend", request);
  region.setAttribute("aria-busy", "false");
  if (!result.ok) {
    showBanner(explain(result, "The recommendation request"));
    return;
  }
  const answer = result.data;
  await ensureVideos(answer.items.map((item) => item.video_id));
  shown = { request, answer };
  renderAnswer(answer, previous);
}

function movement(item, before) {
  if (!before) return null;
  if (!before.has(item.video_id)) return ["new", "new"];
  const was = before.get(item.video_id);
  if (was > item.rank) return ["up", "up " + (was - item.rank)];
  if (was < item.rank) return ["down", "down " + (item.rank - was)];
  return ["same", "same place"];
}

function renderAnswer(answer, previous) {
  const versions = Object.entries(answer.model_versions).map(([m, v]) => m + " v" + v).join(", ");
  $("answer-meta").textContent =
    answer.items.length + " videos for user " + answer.user_id + " | variant " + answer.variant +
    " | served from " + answer.served_from + (answer.degraded ? " (degraded)" : "") +
    " | models " + (versions || "none") + " | request " + answer.request_id;
  const before = previous ? new Map(previous.items.map((item) => [item.video_id, item.rank])) : null;
  $("cards").replaceChildren(...answer.items.map((item) => card(item, movement(item, before))));
  const now = new Set(answer.items.map((item) => item.video_id));
  const gone = previous ? previous.items.filter((item) => !now.has(item.video_id)) : [];
  $("dropped").textContent = gone.length
    ? "No longer in the list: " + gone.map((item) => titleOf(item.video_id)).join(", ") + "."
    : "";
}

function card(item, moved) {
  const info = videos.get(item.video_id);
  const li = el("li", null, "card");
  li.dataset.videoId = item.video_id;
  li.dataset.position = item.rank;
  const head = el("div", null, "card-head");
  head.append(el("span", "#" + item.rank, "rank"), el("h3", titleOf(item.video_id)));
  if (moved) head.append(el("span", moved[1], "move " + moved[0]));
  li.append(head);
  li.append(el("p", info && info.genres.length ? info.genres.join(", ") : "genres unknown", "genres"));
  const facts = el("dl");
  const fact = (name, value) => facts.append(el("dt", name), el("dd", value));
  fact("score", item.score.toFixed(3) + (item.ranker_score === null ? "" : " (ranker " + item.ranker_score.toFixed(3) + ")"));
  fact("from", item.sources.join(", ") || "none");
  fact("why", item.reason);
  li.append(facts);

  const sliderId = "completion-" + item.rank;
  const watch = el("div", null, "watch");
  const label = el("label", "Watched ");
  label.htmlFor = sliderId;
  const percent = el("output", "50%");
  label.append(percent);
  const slider = document.createElement("input");
  Object.assign(slider, { type: "range", id: sliderId, min: 0, max: 100, step: 5, value: 50 });
  slider.addEventListener("input", () => { percent.textContent = slider.value + "%"; });
  watch.append(label, slider);
  li.append(watch);

  const actions = el("div", null, "actions");
  const button = (text, onClick, className) => {
    const b = el("button", text, className);
    b.type = "button";
    b.addEventListener("click", onClick);
    actions.append(b);
  };
  button("Watch", () => react(item, "watch", Number(slider.value)), "watch-button");
  button("Like", () => react(item, "like"), "like");
  button("Dislike", () => react(item, "dislike"), "dislike");
  button("More like this", () => showSimilar(item.video_id), "similar-button");
  li.append(actions);
  return li;
}

// ---- feedback -----------------------------------------------------------------------------------

async function react(item, eventType, completion) {
  if (!shown) return;
  clearBanner();
  const { request, answer } = shown;
  const event = {
    user_id: request.user_id,
    video_id: item.video_id,
    event_type: eventType,
    event_ts: new Date().toISOString(),
    device: request.context.device,
    session_id: sessionId,
    request_id: answer.request_id,
    position: item.rank,
  };
  const info = videos.get(item.video_id);
  if (eventType === "watch" && info && info.duration_s) {
    event.watch_time_s = Math.round((completion / 100) * info.duration_s * 10) / 10;
  }
  const result = await call("/feedback", { events: [event] });
  if (!result.ok) {
    showBanner(explain(result, "The feedback"));
    return;
  }
  if (result.data.rejected.length) {
    showBanner("The service refused the " + eventType + ": " + result.data.rejected[0].reasons.join("; "));
    return;
  }
  const what = eventType === "watch" ? "watched " + completion + "% of" : eventType + "d";
  $("notice").textContent = "You " + what + " " + titleOf(item.video_id) + ": the list below is refreshed.";
  await Promise.all([showHistory(request.user_id, true), recommend(request, answer)]);
}

// ---- similar videos -----------------------------------------------------------------------------

async function showSimilar(videoId) {
  clearBanner();
  const result = await call("/similar", { video_id: videoId, k: 10 });
  if (!result.ok) {
    showBanner(explain(result, "Similar videos"));
    return;
  }
  await ensureVideos([videoId, ...result.data.items.map((item) => item.video_id)]);
  $("similar-title").textContent = "More like " + titleOf(videoId);
  $("similar-list").replaceChildren(...result.data.items.map((item) => {
    const li = el("li");
    const info = videos.get(item.video_id);
    li.append(el("strong", titleOf(item.video_id)));
    li.append(el("span", " " + (info ? info.genres.join(", ") : "") + " | " + item.reason + " (" + item.score.toFixed(3) + ")", "meta"));
    return li;
  }));
  $("similar").hidden = false;
  $("similar-title").tabIndex = -1;
  $("similar-title").focus();
}

// ---- history ------------------------------------------------------------------------------------

function describe(event) {
  if (event.event_type === "rating" && event.rating !== null) return "rated " + event.rating;
  if (event.watch_time_s !== null) {
    const minutes = Math.round(event.watch_time_s / 60);
    const share = event.duration_s ? " (" + Math.round((100 * event.watch_time_s) / event.duration_s) + "%)" : "";
    return event.event_type + " " + minutes + " min" + share;
  }
  return event.event_type;
}

async function showHistory(userId, quiet) {
  const result = await call(base + "/api/history?limit=50&user_id=" + encodeURIComponent(userId));
  if (!result.ok) {
    showBanner(explain(result, "The history"));
    return;
  }
  const { total, events } = result.data;
  $("history-summary").textContent = total
    ? total + " events in the lake for user " + userId + (total > events.length ? ", the newest " + events.length + ":" : ":")
    : "No events in the lake for user " + userId + ".";
  $("history-list").replaceChildren(...events.map((event) => {
    const li = el("li");
    li.append(el("strong", event.title));
    li.append(el("span", " " + event.genres.join(", "), "genres"));
    li.append(el("span", " " + describe(event) + ", " + new Date(event.event_ts).toLocaleString(), "meta"));
    return li;
  }));
  if (!quiet) {
    $("notice").textContent = total ? "" : userId.startsWith("visitor-")
      ? "New visitor " + userId + ": no history yet, so these are cold-start recommendations."
      : "user '" + userId + "' has no history: showing cold-start recommendations.";
  }
}

// ---- the service's state ------------------------------------------------------------------------

async function showStatus() {
  const result = await call("/status", {});
  if (!result.ok) {
    $("status-line").textContent = "Service status unavailable (" + result.status + ").";
    return;
  }
  const s = result.data;
  const loaded = Object.entries(s.model_versions).map(([variant, models]) =>
    variant + ": " + Object.entries(models).map(([m, v]) => m + " v" + v).join(", ")).join("; ");
  $("status-line").textContent = "Serving " + (loaded || "no models") + " | online store " + s.online_store + ".";
}

document.addEventListener("DOMContentLoaded", () => {
  setNow();
  $("query").addEventListener("submit", submit);
  $("user").addEventListener("input", suggestUsers);
  $("new-visitor").addEventListener("click", () => {
    $("user").value = "visitor-" + randomHex(4);
    $("user").focus();
  });
  $("similar-close").addEventListener("click", () => { $("similar").hidden = true; });
  suggestUsers();
  showStatus();
});
