// The operator dashboard of one MEC site: plain JavaScript, no framework, no external URL.
// Every data call carries the operator key (sessionStorage) as `Authorization: Bearer`; a 401/403
// forgets it and asks again. The DOM is built with textContent only: nothing from the server is
// ever parsed as HTML.
"use strict";

(() => {
  const KEY_NAME = "mec.dashboard.operatorKey";
  const POLL_MS = 1000;
  const CHART_SPAN_S = 120;
  const MAX_POINTS = 240; // per site: two minutes at the poll rate, with room for jitter
  const RECENT_LIMIT = 50;
  const STREAM_MAX_BUFFER = 1 << 20; // an SSE line longer than this ends the stream
  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies.
  const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];
  const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };

  const $ = (id) => document.getElementById(id);

  let key = null;
  let generation = 0; // bumped by every start and sign-out: loops of an older one stop
  let pollTimer = null;
  let streamAbort = null;
  const history = new Map(); // site id -> [{t, cpu}]
  const colours = new Map(); // site id -> colour, fixed once seen
  const alerts = new Map(); // alert id -> alert
  let hostCpu = null; // this site's CPU from the last snapshot: the chart's line for a site on its own

  class AuthError extends Error {}

  // ---- small DOM helpers (text only) ----
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (name === "className") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const dash = "—";
  const num = (value, digits = 1) => (typeof value === "number" && isFinite(value) ? value.toFixed(digits) : dash);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  function clock(unixSeconds, millis = false) {
    if (typeof unixSeconds !== "number") return dash;
    const d = new Date(unixSeconds * 1000);
    const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return millis ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
  }
  function yesNo(flag) {
    return el("span", { className: flag ? "yes" : "no" }, flag ? "yes" : "no");
  }
  function stateText(state) {
    if (state === undefined || state === null || state === "") return el("span", {}, dash);
    return el("span", { className: `state-${state}` }, String(state));
  }
  function overloadOf(value) {
    if (typeof value === "string") return value;
    if (value && typeof value === "object" && typeof value.state === "string") return value.state;
    return null;
  }

  // ---- HTTP ----
  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      /* not JSON */
    }
    return `HTTP ${response.status}`;
  }

  async function call(path, options = {}) {
    const mine = generation; // a refusal that comes back after a new key was entered is old news
    const response = await fetch(path, {
      ...options,
      cache: "no-store",
      headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` },
    });
    if (response.status === 401 || response.status === 403) {
      const message = await errorText(response);
      if (mine === generation) signOut(`The site refused the key (${response.status}): ${message}`);
      throw new AuthError(message);
    }
    if (!response.ok) throw new Error(`${path}: ${await errorText(response)}`);
    return response.json();
  }

  // ---- key form ----
  function showLogin(message) {
    $("panels").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    $("key-error").textContent = message || "";
    $("status").textContent = "Not connected";
    $("key-input").value = "";
    $("key-input").focus();
  }

  function signOut(message) {
    generation += 1;
    key = null;
    sessionStorage.removeItem(KEY_NAME);
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
    if (streamAbort) streamAbort.abort();
    streamAbort = null;
    alerts.clear();
    history.clear();
    showLogin(message);
  }

  function start(withKey) {
    key = withKey;
    generation += 1;
    $("login").hidden = true;
    $("panels").hidden = false;
    $("sign-out").hidden = false;
    $("key-error").textContent = "";
    $("status").textContent = "Connecting…";
    poll(generation);
    streamAlerts(generation);
  }

  // ---- polling: sites, snapshot, recent requests ----
  async function poll(mine) {
    pollTimer = null;
    if (mine !== generation) return;
    const results = await Promise.allSettled([
      call("/v1/sites").then(renderSites),
      call("/v1/metrics/snapshot").then(renderSnapshot),
      call(`/v1/metrics/recent?limit=${RECENT_LIMIT}`).then(renderRecent),
    ]);
    if (mine !== generation) return;
    const failed = results.filter((r) => r.status === "rejected");
    if (failed.some((r) => r.reason instanceof AuthError)) return;
    $("status").textContent = failed.length
      ? `Update failed: ${failed[0].reason && failed[0].reason.message}`
      : `Updated ${clock(Date.now() / 1000)}`;
    pollTimer = setTimeout(() => poll(mine), POLL_MS);
  }

  function renderSites(view) {
    $("site-name").textContent = view.site || dash;
    document.title = `MEC ${view.site || "site"} dashboard`;
    const consensus = view.consensus || {};
    $("swarm-summary").textContent =
      `Leader ${view.leader || "none"} · term ${view.term ?? dash} · commit ${view.commit_index ?? dash}` +
      (consensus.backend ? ` · consensus ${consensus.backend} ${consensus.healthy ? "healthy" : "unhealthy"}` : "");
    const rows = [];
    const now = Date.now() / 1000;
    for (const site of view.sites || []) {
      const load = site.load || null;
      const isLeader = site.site_id === view.leader;
      const isSelf = site.site_id === view.site;
      rows.push(
        el(
          "tr",
          { className: isLeader ? "leader" : "", dataset: { siteId: site.site_id, leader: String(isLeader) } },
          el("td", { className: "site" }, site.site_id, isSelf ? el("small", { className: "muted" }, " (here)") : null),
          el("td", {}, isLeader ? el("span", { className: "badge leader" }, "leader") : "follower"),
          el("td", {}, yesNo(site.healthy)),
          el("td", {}, site.member === undefined ? dash : yesNo(site.member)),
          el("td", {}, isSelf ? "local" : num(site.rtt_ms, 2)),
          el("td", {}, load ? num(load.cpu_percent) : dash),
          el("td", {}, load ? num(load.gpu_util) : dash),
          el("td", {}, stateText(load ? overloadOf(load.overload) : null)),
        ),
      );
      const cpu = load ? load.cpu_percent : isSelf ? hostCpu : null;
      if (typeof cpu === "number") addPoint(site.site_id, now, cpu);
    }
    $("sites-table").tBodies[0].replaceChildren(...rows);
    renderPlacements(view.placements || {}, view.cloud_fallback || []);
    drawChart(now);
  }

  function renderPlacements(placements, fallback) {
    const rows = Object.keys(placements)
      .sort()
      .map((service) => {
        const shares = Object.entries(placements[service] || {})
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([site, count]) => `${site}: ${count}`)
          .join(", ");
        return el("tr", { dataset: { service } }, el("td", {}, service), el("td", {}, shares || "none"));
      });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 2 }, "No placements committed")));
    $("placements-table").tBodies[0].replaceChildren(...rows);
    $("cloud-fallback").textContent = fallback.length
      ? `Cloud fallback: ${fallback.join(", ")}`
      : "No site in cloud-fallback mode";
  }

  function renderSnapshot(snap) {
    const overload = snap.overload && typeof snap.overload === "object" ? snap.overload : null;
    const details = overload
      ? Object.entries(overload)
          .filter(([name, value]) => name !== "state" && ["string", "number", "boolean"].includes(typeof value))
          .map(([name, value]) => `${name.replace(/_/g, " ")} ${typeof value === "number" ? num(value, 2) : value}`)
      : [];
    $("overload-state").replaceChildren(
      stateText(overload ? overload.state : null),
      details.length ? el("small", { className: "muted" }, ` · ${details.join(" · ")}`) : "",
    );
    const host = snap.host;
    hostCpu = host && typeof host.cpu_percent === "number" ? host.cpu_percent : null;
    $("host-figures").textContent = host ? `${num(host.cpu_percent)} % / ${num(host.memory_percent)} %` : dash;

    const breakers = Object.entries(snap.cloud || {})
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([service, b]) =>
        el(
          "tr",
          { dataset: { service } },
          el("td", {}, service),
          el("td", {}, stateText(b.state)),
          el("td", {}, b.failures ?? dash),
          el("td", {}, b.retry_after_s ?? dash),
          el("td", {}, b.sent ?? dash),
          el("td", {}, b.answered ?? dash),
          el("td", {}, num(b.rtt_ms, 1)),
        ),
      );
    if (!breakers.length) breakers.push(el("tr", {}, el("td", { colspan: 7 }, "No cloud endpoint configured")));
    $("breakers-table").tBodies[0].replaceChildren(...breakers);

    const counters = snap.alerts || {};
    const facts = [];
    for (const name of ["active", "published", "dropped", "sink_failures", "subscribers"]) {
      if (name in counters) facts.push(el("dt", {}, name.replace("_", " ")), el("dd", {}, counters[name]));
    }
    $("alert-counters").replaceChildren(...facts);

    const stats = (snap.requests || []).map((s) =>
      el(
        "tr",
        { dataset: { service: s.service } },
        el("td", {}, s.service),
        el("td", {}, num(s.rate_per_s, 2)),
        el("td", {}, num(s.p50_ms, 2)),
        el("td", {}, num(s.p95_ms, 2)),
        el("td", {}, num(s.p99_ms, 2)),
        el("td", {}, s.errors),
        el("td", {}, s.rejected),
        el(
          "td",
          {},
          Object.entries(s.by_tier || {})
            .map(([tier, n]) => `${tier} ${n}`)
            .join(", "),
        ),
      ),
    );
    if (!stats.length) stats.push(el("tr", {}, el("td", { colspan: 8 }, "No requests in the window")));
    $("request-stats").tBodies[0].replaceChildren(...stats);
  }

  function renderRecent(answer) {
    const rows = (answer.requests || []).map((r) =>
      el(
        "tr",
        { dataset: { tier: r.tier } },
        el("td", {}, clock(r.at, true)),
        el("td", {}, r.service),
        el("td", {}, r.tier),
        el("td", {}, r.status),
        el("td", {}, num(r.latency_ms, 2)),
        el("td", {}, r.site),
      ),
    );
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6 }, "No requests yet")));
    $("recent-table").tBodies[0].replaceChildren(...rows);
  }

  // ---- the load chart (canvas, drawn here) ----
  function colourOf(siteId) {
    if (!colours.has(siteId)) colours.set(siteId, PALETTE[colours.size % PALETTE.length]);
    return colours.get(siteId);
  }

  function addPoint(siteId, t, cpu) {
    const points = history.get(siteId) || [];
    points.push({ t, cpu: Math.max(0, Math.min(100, cpu)) });
    while (points.length > MAX_POINTS || (points.length && points[0].t < t - CHART_SPAN_S)) points.shift();
    history.set(siteId, points);
  }

  function drawChart(now) {
    const canvas = $("load-chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 640;
    const height = canvas.clientHeight || 220;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 40;
    const right = 10;
    const top = 10;
    const bottom = 24;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const x = (t) => left + plotW * (1 - (now - t) / CHART_SPAN_S);
    const y = (cpu) => top + plotH * (1 - cpu / 100);

    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#4a4a4a";
    ctx.strokeStyle = "#d8d8d8";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const level of [0, 25, 50, 75, 100]) {
      ctx.beginPath();
      ctx.moveTo(left, y(level));
      ctx.lineTo(left + plotW, y(level));
      ctx.stroke();
      ctx.fillText(`${level}%`, left - 6, y(level));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const ago of [120, 90, 60, 30, 0]) {
      ctx.textAlign = ago ? "center" : "right";
      ctx.fillText(ago ? `-${ago}s` : "now", ago ? x(now - ago) : left + plotW, top + plotH + 6);
    }

    const legend = [];
    const described = [];
    for (const siteId of [...history.keys()].sort()) {
      const points = history.get(siteId);
      const colour = colourOf(siteId);
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.cpu)) : ctx.moveTo(x(p.t), y(p.cpu))));
      ctx.stroke();
      const last = points.length ? points[points.length - 1].cpu : null;
      const swatch = el("span", { className: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = colour;
      legend.push(el("li", { dataset: { siteId } }, swatch, `${siteId} ${num(last)} %`));
      described.push(`${siteId} ${num(last)} %`);
    }
    $("load-legend").replaceChildren(...legend);
    const oldest = Math.min(...[...history.values()].map((points) => (points.length ? points[0].t : now)));
    canvas.dataset.spanS = String(Math.round(now - Math.min(oldest, now)));
    canvas.setAttribute("aria-label", described.length ? `CPU per site now: ${described.join(", ")}` : "CPU per site: no data yet");
  }

  // ---- live alerts: SSE read with fetch() so that the key goes in a header ----
  function setStream(state, text) {
    const node = $("stream-state");
    node.dataset.state = state;
    node.textContent = `Live stream: ${text}`;
  }

  async function readEvents(body, onEvent, signal) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let name = "";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || signal.aborted) return;
        buffer += value;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        if (buffer.length > STREAM_MAX_BUFFER) throw new Error("an event line is too long");
        for (const line of lines) {
          if (line === "") {
            if (data.length) onEvent(name || "message", data.join("\n"));
            name = "";
            data = [];
            continue;
          }
          if (line.startsWith(":")) continue; // a comment: the keep-alive
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function onAlertEvent(name, raw) {
    let data;
    try {
      data = JSON.parse(raw);
    } catch (_) {
      return;
    }
    if (name === "snapshot") {
      alerts.clear();
      for (const alert of data.active || []) alerts.set(alert.id, alert);
    } else if (data && data.alert && data.alert.id) {
      if (name === "alert.resolved") alerts.delete(data.alert.id);
      else alerts.set(data.alert.id, data.alert);
    }
    renderAlerts();
  }

  async function streamAlerts(mine) {
    let delay = BACKOFF_FIRST_MS;
    while (mine === generation) {
      const abort = new AbortController();
      streamAbort = abort;
      try {
        setStream("connecting", "connecting…");
        const response = await fetch("/v1/alerts/stream", {
          headers: { Authorization: `Bearer ${key}`, Accept: "text/event-stream" },
          cache: "no-store",
          signal: abort.signal,
        });
        if (response.status === 401 || response.status === 403) {
          if (mine === generation) signOut(`The site refused the key (${response.status}): ${await errorText(response)}`);
          return;
        }
        if (!response.ok || !response.body) throw new Error(await errorText(response));
        await readEvents(
          response.body,
          (name, raw) => {
            if (name === "snapshot") {
              delay = BACKOFF_FIRST_MS; // a stream that delivered counts as healthy again
              setStream("live", "live");
            }
            onAlertEvent(name, raw);
          },
          abort.signal,
        );
        if (mine !== generation || abort.signal.aborted) return;
        throw new Error("the stream ended");
      } catch (err) {
        if (mine !== generation || abort.signal.aborted) return;
        setStream("reconnecting", `${err.message}; reconnecting in ${Math.round(delay / 1000)} s`);
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  function renderAlerts() {
    const sorted = [...alerts.values()].sort(
      (a, b) => (SEVERITY_ORDER[a.severity] ?? 9) - (SEVERITY_ORDER[b.severity] ?? 9) || (a.fired_at || 0) - (b.fired_at || 0),
    );
    const items = sorted.map((alert) => {
      const acked = Boolean(alert.acknowledged_at);
      const item = el(
        "li",
        { dataset: { alertId: alert.id, rule: alert.rule, acknowledged: String(acked) } },
        el("span", { className: `badge ${alert.severity}` }, alert.severity),
        el("span", { className: "what" }, `${alert.rule} on ${alert.subject}`),
        el("span", {}, `${alert.metric} ${num(alert.value, 2)} > ${num(alert.threshold, 2)}`),
        el("span", { className: "muted" }, `since ${clock(alert.fired_at)}${alert.fired > 1 ? ` · fired ${alert.fired}×` : ""}`),
      );
      if (acked) {
        item.append(el("span", { className: "acked" }, `acknowledged by ${alert.acknowledged_by || "an operator"}`));
      } else {
        const button = el("button", { type: "button", className: "ack", "aria-label": `Acknowledge ${alert.rule} on ${alert.subject}` }, "Ack");
        button.addEventListener("click", () => acknowledge(alert.id, button));
        item.append(button);
      }
      return item;
    });
    $("alerts-list").replaceChildren(...items);
    $("alerts-empty").hidden = items.length > 0;
  }

  async function acknowledge(alertId, button) {
    button.disabled = true;
    try {
      const alert = await call(`/v1/alerts/${encodeURIComponent(alertId)}/ack`, { method: "POST" });
      if (alerts.has(alert.id)) alerts.set(alert.id, alert);
      renderAlerts();
    } catch (err) {
      if (err instanceof AuthError) return;
      button.disabled = false;
      $("status").textContent = `Ack failed: ${err.message}`;
    }
  }

  // ---- start ----
  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const entered = $("key-input").value.trim();
      if (!entered) return;
      sessionStorage.setItem(KEY_NAME, entered);
      $("key-input").value = "";
      start(entered);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    const stored = sessionStorage.getItem(KEY_NAME);
    if (stored) start(stored);
    else showLogin("");
  });
})();
