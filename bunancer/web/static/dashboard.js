/* bunancer dashboard: keeps the server-rendered pages live.
 *
 * The pages are complete without this script. It opens one EventSource on /events and
 * applies what arrives: `summary` (every figure, once a second) updates numbers, badges,
 * sparklines and charts in place; `server.state` turns a badge at once; `stats.tick` sets
 * how many dots travel to each server in the flow view; a server or pool coming or going
 * fetches the page's content again (?partial=1) so the markup has one source, the
 * templates. Forms marked `js-action` are sent with fetch (CSRF token in a header) and
 * answered with a toast instead of a page load. Plain JS and SVG, no dependencies.
 */
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES_MAX = 300; // seconds kept per server while a page is open
  const SPARK = 60; // seconds a sparkline shows
  const FEED_MAX = 30; // as FEED in dashboard.py
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  const page = document.body.dataset.page;
  const loggedIn = document.body.dataset.user === "yes";
  const main = $("#main");
  const panel = $("#panel");

  // -- formatting: the same rules as dashboard.py's filters ---------------------------------

  function fmtRps(value) {
    if (value === null || value === undefined) return "—";
    if (value >= 10000) return `${(value / 1000).toFixed(0)}k`;
    if (value >= 1000) return `${(value / 1000).toFixed(1)}k`;
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }
  function fmtPct(value) {
    if (value === null || value === undefined) return "—";
    if (value === 0) return "0%";
    if (value < 0.001) return "<0.1%";
    return value < 0.1 ? `${(value * 100).toFixed(1)}%` : `${(value * 100).toFixed(0)}%`;
  }
  function fmtMs(value) {
    if (value === null || value === undefined) return "—";
    const ms = value * 1000;
    if (ms < 0.9995) return `${(ms * 1000).toFixed(0)} µs`; // as fmt_ms: no "1000 µs"
    if (ms < 9.95) return `${ms.toFixed(1)} ms`;
    if (ms < 9999.5) return `${ms.toFixed(0)} ms`;
    return `${(ms / 1000).toFixed(1)} s`;
  }
  function fmtFor(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 60) return `${Math.floor(seconds)}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
    return `${(seconds / 3600).toFixed(1)}h`;
  }
  function clock(wall) {
    return new Date(wall * 1000).toTimeString().slice(0, 8);
  }
  const FORMAT = {
    rps: fmtRps,
    error_rate: fmtPct,
    p99: fmtMs,
    p50_1s: fmtMs,
    p99_1s: fmtMs,
    in_flight: String,
    max_in_flight: String,
    weight: String,
    algorithm: String,
    routable: String,
    retried: String,
    requests_total: String,
    errors_total: String,
    retries: String,
    redispatches: String,
    downtime: fmtFor,
  };

  // One series as SVG polyline segments; null breaks the line (as `points` in Python).
  function points(values, width, height, top) {
    const numbers = values.filter((v) => v !== null && v !== undefined);
    if (top === undefined || top === null) top = numbers.length ? Math.max(...numbers) : 0;
    const scale = top ? (height - 2) / top : 0;
    const step = width / Math.max(values.length - 1, 1);
    const segments = [];
    let current = [];
    values.forEach((value, index) => {
      if (value === null || value === undefined) {
        if (current.length) segments.push(current.join(" "));
        current = [];
        return;
      }
      current.push(`${(index * step).toFixed(1)},${(height - 1 - value * scale).toFixed(1)}`);
    });
    if (current.length) segments.push(current.join(" "));
    return segments;
  }
  function drawLines(group, segments) {
    group.replaceChildren(
      ...segments.map((segment) => {
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", segment);
        return line;
      }),
    );
  }

  // -- the model: what the last summary said, and per-second series ---------------------------

  let data = readPageData();
  const model = { summary: null, seq: 0, states: new Map(), series: new Map(), lastId: null };

  function readPageData() {
    const element = $("#page-data");
    try {
      return element ? JSON.parse(element.textContent) : {};
    } catch (error) {
      return {};
    }
  }

  function emptySeries(length) {
    return {
      rps: new Array(length).fill(0),
      errors: new Array(length).fill(0),
      p50: new Array(length).fill(null),
      p99: new Array(length).fill(null),
    };
  }

  function adoptPageData() {
    const summary = data.summary;
    if (model.lastId === null && data.last_id) model.lastId = String(data.last_id);
    if (summary && (!model.summary || summary.seq >= model.seq)) {
      model.summary = summary;
      model.seq = data.seq || summary.seq || 0;
      model.states = new Map(Object.entries(summary.servers).map(([key, s]) => [key, s.state]));
    }
    for (const [key, rps] of Object.entries(data.histories || {})) {
      if (model.series.has(key)) continue; // ours is as fresh and may be longer
      const series = emptySeries(rps.length);
      series.rps = rps.slice();
      model.series.set(key, series);
    }
    if (data.key && data.series && !model.series.has(data.key)) {
      const s = data.series;
      model.series.set(data.key, {
        rps: s.rps.slice(),
        errors: s.errors.slice(),
        p50: s.p50.slice(),
        p99: s.p99.slice(),
      });
    }
  }

  function push(series, point) {
    for (const name of ["rps", "errors", "p50", "p99"]) {
      series[name].push(point[name]);
      if (series[name].length > SERIES_MAX) series[name].shift();
    }
  }

  function lastPoint(series) {
    const at = (name) => series[name][series[name].length - 1];
    return { rps: at("rps") ?? 0, errors: at("errors") ?? 0, p50: at("p50") ?? null, p99: at("p99") ?? null };
  }

  // -- applying a summary -----------------------------------------------------------------------

  function onSummary(summary) {
    if (model.summary && summary.seq < model.seq - 30) model.seq = summary.seq - 1; // restarted
    const gap = summary.seq - model.seq;
    for (const [key, figures] of Object.entries(summary.servers)) {
      let series = model.series.get(key);
      if (!series) {
        series = emptySeries(SPARK);
        model.series.set(key, series);
      }
      const point = { rps: figures.rps, errors: figures.errors, p50: figures.p50_1s, p99: figures.p99_1s };
      if (gap >= 1) {
        // A jump of more than one: seconds went by unseen, and nothing changed in them.
        for (let missed = 1; missed < Math.min(gap, 10); missed += 1) push(series, lastPoint(series));
        push(series, point);
      } else if (gap === 0 && series.rps.length) {
        for (const name of ["rps", "errors", "p50", "p99"]) series[name][series[name].length - 1] = point[name];
      }
    }
    for (const key of Array.from(model.series.keys())) {
      if (!(key in summary.servers)) model.series.delete(key);
    }
    model.seq = Math.max(model.seq, summary.seq);
    model.summary = summary;
    model.states = new Map(Object.entries(summary.servers).map(([key, s]) => [key, s.state]));
    applySummary(summary);
    checkStructure(summary);
  }

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function setState(element, state) {
    for (const name of Array.from(element.classList)) {
      if (name.startsWith("state-") && name !== `state-${state}`) element.classList.remove(name);
    }
    element.classList.add(`state-${state}`);
  }

  function applyServer(element, figures) {
    if (!element.matches(".badge")) setState(element, figures.state);
    for (const field of $$("[data-field]", element)) {
      const name = field.dataset.field;
      if (name === "state") {
        setText(field, figures.state);
        if (field.classList.contains("badge")) setState(field, figures.state);
      } else if (name === "reason") {
        setText(field, figures.reason);
        field.title = figures.reason;
      } else if (name in FORMAT && name in figures) {
        setText(field, FORMAT[name](figures[name]));
      }
    }
  }

  function applyCounts(counts, total) {
    for (const element of $$("[data-count]")) {
      const name = element.dataset.count;
      const value = name === "total" ? total : counts[name] || 0;
      setText(element, String(value));
      const tile = element.closest(".tile");
      if (tile && name !== "total") tile.classList.toggle("zero", value === 0);
    }
  }

  function countsFromStates() {
    const counts = {};
    for (const state of model.states.values()) counts[state] = (counts[state] || 0) + 1;
    return counts;
  }

  function applySummary(summary) {
    applyCounts(summary.counts, summary.total);
    for (const element of $$("[data-traffic]")) {
      const name = element.dataset.traffic;
      setText(element, FORMAT[name](summary.traffic[name]));
    }
    for (const element of $$("[data-pool]")) {
      const pool = summary.pools[element.dataset.pool];
      if (!pool) continue;
      for (const field of $$("[data-pool-field]", element)) {
        const name = field.dataset.poolField;
        if (name in FORMAT) setText(field, FORMAT[name](pool[name]));
      }
    }
    for (const edge of $$("[data-pool-edge]")) {
      const pool = summary.pools[edge.dataset.poolEdge];
      if (!pool) continue;
      edge.classList.toggle("up", pool.routable > 0);
      edge.classList.toggle("down", pool.routable === 0 && pool.servers > 0);
      edge.classList.toggle("empty", pool.servers === 0);
    }
    for (const element of $$("[data-key]")) {
      const figures = summary.servers[element.dataset.key];
      if (figures) applyServer(element, figures);
    }
    for (const spark of $$("svg.spark[data-spark]")) {
      const series = model.series.get(spark.dataset.spark);
      if (series) drawLines(spark, points(series.rps.slice(-SPARK), 120, 28));
    }
    if (page === "server") drawCharts();
  }

  // Servers or pools on the page that the summary does not know (or the reverse): reload.
  function checkStructure(summary) {
    if (page === "overview" || page === "flow" || page === "settings") {
      const shown = new Set($$("[data-key]", main).map((e) => e.dataset.key));
      const known = Object.keys(summary.servers);
      const pools = new Set($$("[data-pool]", main).map((e) => e.dataset.pool));
      const samePools = Object.keys(summary.pools).every((name) => pools.has(name)) && pools.size === Object.keys(summary.pools).length;
      if (!samePools || shown.size !== known.length || known.some((key) => !shown.has(key))) scheduleRefresh();
    } else if (page === "server" && data.key && !(data.key in summary.servers)) {
      banner("This server is no longer in the pool.");
    }
  }

  // -- events -----------------------------------------------------------------------------------

  function keyOf(d) {
    return `${d.pool}/${d.id}`;
  }

  function onState(event) {
    const d = event.data;
    const key = keyOf(d);
    model.states.set(key, d.new);
    for (const element of $$(`[data-key="${CSS.escape(key)}"]`)) {
      if (!element.matches(".badge")) setState(element, d.new);
      for (const field of $$("[data-field=state]", element)) {
        setText(field, d.new);
        if (field.classList.contains("badge")) setState(field, d.new);
      }
      for (const field of $$("[data-field=reason]", element)) {
        setText(field, d.reason);
        field.title = d.reason;
      }
      if (element.matches("tr")) {
        element.classList.add("flash");
        setTimeout(() => element.classList.remove("flash"), 800);
      }
    }
    if (key === data.key) sinceBase = Date.now() / 1000;
    if (model.summary) applyCounts(countsFromStates(), model.states.size);
    feed(event);
  }

  function eventText(kind, d) {
    switch (kind) {
      case "server.state":
        return `${d.pool}/${d.id}: ${d.old} → ${d.new} (${d.reason})`;
      case "server.added":
        return `${d.pool}/${d.id} added at ${d.address}`;
      case "server.removed":
        return `${d.pool}/${d.id} removed (${d.reason})`;
      case "pool.added":
        return `pool ${d.name} added (${d.algorithm})`;
      case "pool.removed":
        return `pool ${d.name} removed`;
      case "pool.updated":
        return `pool ${d.name} updated: ${d.algorithm}, ${d.routable} routable`;
      default:
        return kind;
    }
  }

  function feed(event) {
    const list = $("#feed");
    if (!list) return;
    // A server's page lists that server's changes only.
    if (list.dataset.server && keyOf(event.data) !== list.dataset.server) return;
    $(".empty-feed", list)?.remove();
    const item = document.createElement("li");
    item.className = `fresh kind-${event.kind.replace(".", "-")}`;
    const time = document.createElement("time");
    time.textContent = clock(event.at);
    item.append(time, ` ${eventText(event.kind, event.data)}`);
    list.prepend(item);
    while (list.children.length > FEED_MAX) list.lastElementChild.remove();
  }

  function onStructure(event) {
    const d = event.data;
    if (event.kind === "server.added") model.states.set(keyOf(d), d.state);
    if (event.kind === "server.removed") model.states.delete(keyOf(d));
    if (event.kind !== "server.updated") feed(event);
    if (event.kind.startsWith("server.") && model.summary) applyCounts(countsFromStates(), model.states.size);
    if (event.kind === "server.updated") {
      for (const element of $$(`[data-key="${CSS.escape(keyOf(d))}"] [data-field=weight]`)) setText(element, String(d.weight));
    }
    if (page !== "server" || keyOf(d) === data.key) scheduleRefresh();
  }

  function onTick(event) {
    for (const s of event.data.servers) {
      flow.rates.set(keyOf(s), { rps: s.rps, errors: s.errors });
    }
  }

  function onChecked(event) {
    const d = event.data;
    if (keyOf(d) !== data.key) return;
    const body = $("#checks");
    if (!body) return;
    $("tr.none", body)?.remove();
    const row = document.createElement("tr");
    row.className = `${d.ok ? "ok" : "fail"} new`;
    const cells = [clock(event.at), d.ok ? "pass" : "fail", d.detail, d.ok || d.latency ? fmtMs(d.latency) : "—"];
    cells.forEach((text, index) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (index === 3) cell.className = "num";
      row.append(cell);
    });
    body.prepend(row);
    setTimeout(() => row.classList.remove("new"), 1000);
    while (body.children.length > 10) body.lastElementChild.remove();
  }

  // -- the live connection ------------------------------------------------------------------------

  function setLive(state, label) {
    const live = $("#live");
    if (!live) return;
    live.dataset.state = state;
    setText($(".label", live), label);
  }

  function connect() {
    if (!("EventSource" in window)) return;
    const query = new URLSearchParams();
    if (page === "server") query.set("checks", "1");
    if (model.lastId !== null) query.set("last_event_id", model.lastId);
    const source = new EventSource(`/events${query.toString() ? `?${query}` : ""}`);
    setLive("reconnecting", "connecting…");
    source.onopen = () => setLive("live", "live");
    source.onerror = () => {
      setLive("reconnecting", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000); // refused outright
    };
    const on = (kind, handler) =>
      source.addEventListener(kind, (message) => {
        if (message.lastEventId) model.lastId = message.lastEventId;
        let payload;
        try {
          payload = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        handler(payload);
      });
    on("summary", onSummary);
    on("server.state", onState);
    on("stats.tick", onTick);
    on("server.checked", onChecked);
    on("resync", () => scheduleRefresh());
    for (const kind of ["server.added", "server.removed", "server.updated", "pool.added", "pool.removed", "pool.updated"]) {
      on(kind, onStructure);
    }
  }

  // -- reloading the page's content ------------------------------------------------------------

  let refreshTimer = null;
  let refreshWaiting = false;

  function isDirty() {
    return $$("form[data-dirty]", main).length > 0;
  }

  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(refresh, 150);
  }

  async function refresh() {
    refreshTimer = null;
    if (!["overview", "flow", "settings", "server"].includes(page)) return;
    if (isDirty()) {
      refreshWaiting = true; // after the form is sent
      banner("Pools or servers changed. Your unsaved changes are kept; save or reload to see them.");
      return;
    }
    refreshWaiting = false;
    let response;
    try {
      response = await fetch(`${location.pathname}?partial=1`, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    } catch (error) {
      return;
    }
    if (response.status === 404 && page === "server") {
      banner("This server is no longer in the pool.");
      return;
    }
    if (!response.ok) return;
    const html = await response.text();
    const openMenus = $$("details.menu[open]", main).map((d) => d.closest("[data-key]")?.dataset.key);
    const log = $("#log", main);
    main.innerHTML = html;
    if (log && $("#log", main)) {
      $("#log", main).replaceWith(log); // keeps the live log and its stream
      log.scrollTop = log.scrollHeight; // moving a node resets its scroll position
    }
    for (const key of openMenus) {
      if (key) $(`[data-key="${CSS.escape(key)}"] details.menu`, main)?.setAttribute("open", "");
    }
    data = readPageData();
    adoptPageData();
    initPage();
  }

  function banner(text) {
    let element = $(".banner", main);
    if (!element) {
      element = document.createElement("div");
      element.className = "banner";
      main.prepend(element);
    }
    setText(element, text);
  }

  // -- forms: sent with fetch, answered with a toast ---------------------------------------------

  function csrfToken() {
    return $('meta[name="csrf-token"]')?.content || "";
  }

  function toast(message, level = "ok") {
    const box = $("#toasts");
    if (!box) return null;
    const element = document.createElement("div");
    element.className = `toast ${level}`;
    element.textContent = message;
    element.setAttribute("role", level === "error" ? "alert" : "status");
    box.append(element);
    if (level !== "busy") setTimeout(() => element.remove(), level === "error" ? 9000 : 5000);
    return element;
  }

  document.addEventListener("input", (event) => {
    const form = event.target.form;
    if (form && form.classList.contains("js-action") && form.classList.contains("settings")) form.dataset.dirty = "1";
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("js-action")) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const submitter = event.submitter;
    const body = new URLSearchParams(new FormData(form, submitter));
    if (submitter) {
      submitter.disabled = true;
      submitter.classList.add("busy");
    }
    // Stubs take a moment to start or stop: say so if it is not instant.
    let busy = null;
    const slow = setTimeout(() => (busy = toast("Working…", "busy")), 400);
    try {
      // getAttribute: a control named "action" (the admin buttons) shadows `form.action`.
      const response = await fetch(form.getAttribute("action"), {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (error) {
        answer = {};
      }
      const detail = answer.detail ? `: ${answer.detail}` : "";
      toast(answer.message || `${answer.error || response.statusText}${detail}`, response.ok ? "ok" : "error");
      if (response.ok) {
        delete form.dataset.dirty;
        form.closest("details.menu")?.removeAttribute("open");
        if (form.closest("#panel")) reloadPanel();
        else if (page !== "flow") scheduleRefresh();
        if (refreshWaiting) scheduleRefresh();
      }
    } catch (error) {
      toast(`The dashboard did not answer (${error.message}).`, "error");
    } finally {
      clearTimeout(slow);
      busy?.remove();
      if (submitter) {
        submitter.disabled = false;
        submitter.classList.remove("busy");
      }
    }
  });

  // -- the flow view: dots in proportion to each server's requests ----------------------------

  const TRAVEL = 1.1; // seconds a dot takes from the balancer to its server
  const MAX_DOTS = 500;
  const flow = { routes: new Map(), rates: new Map(), carry: new Map(), dots: [], layer: null, running: false, last: 0 };

  // Dots per second for a request rate: one per request up to 20/s, then logarithmic, so
  // 1000 rps is busy but readable and ten times that is busier still.
  function dotRate(rps) {
    if (rps <= 0) return 0;
    if (rps <= 20) return rps;
    return Math.min(20 + 8 * Math.log2(rps / 20), 70);
  }

  function initFlow() {
    flow.layer = $("#dots");
    flow.routes.clear();
    flow.dots = [];
    if (!flow.layer) return;
    for (const path of $$("path[data-route]")) flow.routes.set(path.dataset.route, { path, length: path.getTotalLength() });
    if (model.summary) {
      for (const [key, figures] of Object.entries(model.summary.servers)) {
        if (!flow.rates.has(key)) flow.rates.set(key, { rps: figures.rps, errors: figures.errors });
      }
    }
    if (!flow.running) {
      flow.running = true;
      flow.last = 0;
      requestAnimationFrame(step);
    }
  }

  function step(now) {
    if (!flow.layer || !flow.layer.isConnected) {
      flow.running = false;
      return;
    }
    const dt = flow.last ? Math.min((now - flow.last) / 1000, 0.25) : 0;
    flow.last = now;
    for (const [key, route] of flow.routes) {
      const rate = flow.rates.get(key);
      const state = model.states.get(key);
      if (!rate || rate.rps <= 0 || state === "dead" || state === "disabled") continue;
      let carry = (flow.carry.get(key) ?? Math.random()) + dotRate(rate.rps) * dt;
      const errorShare = Math.min(rate.errors / rate.rps, 1);
      while (carry >= 1) {
        carry -= 1;
        if (flow.dots.length < MAX_DOTS) spawn(route, Math.random() < errorShare);
      }
      flow.carry.set(key, carry);
    }
    for (let index = flow.dots.length - 1; index >= 0; index -= 1) {
      const dot = flow.dots[index];
      dot.t += dt / TRAVEL;
      if (dot.t >= 1 || !dot.route.path.isConnected) {
        dot.element.remove();
        flow.dots.splice(index, 1);
        continue;
      }
      const point = dot.route.path.getPointAtLength(dot.t * dot.route.length);
      dot.element.setAttribute("cx", point.x.toFixed(1));
      dot.element.setAttribute("cy", point.y.toFixed(1));
    }
    requestAnimationFrame(step);
  }

  function spawn(route, error) {
    const element = document.createElementNS(SVG, "circle");
    element.setAttribute("r", error ? "3.6" : "3");
    if (error) element.setAttribute("class", "error");
    const start = route.path.getPointAtLength(0);
    element.setAttribute("cx", start.x);
    element.setAttribute("cy", start.y);
    flow.layer.append(element);
    flow.dots.push({ element, route, t: Math.random() * 0.04 });
  }

  // -- the side panel (flow view) -------------------------------------------------------------

  let panelUrl = null;

  async function openPanel(url, node) {
    panelUrl = url;
    $$("a.node.selected").forEach((n) => n.classList.remove("selected"));
    node?.classList.add("selected");
    await reloadPanel();
  }

  async function reloadPanel() {
    if (!panelUrl || !panel) return;
    let response;
    try {
      response = await fetch(panelUrl, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    } catch (error) {
      return;
    }
    if (!response.ok) {
      closePanel();
      return;
    }
    panel.innerHTML = await response.text();
    panel.hidden = false;
    if (model.summary) applySummary(model.summary);
  }

  function closePanel() {
    panelUrl = null;
    if (panel) {
      panel.hidden = true;
      panel.replaceChildren();
    }
    $$("a.node.selected").forEach((n) => n.classList.remove("selected"));
  }

  document.addEventListener("click", (event) => {
    const node = event.target.closest("a.node[data-panel]");
    if (node && !event.metaKey && !event.ctrlKey && !event.shiftKey) {
      event.preventDefault();
      openPanel(node.dataset.panel, node);
      return;
    }
    if (event.target.closest("[data-close-panel]")) closePanel();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closePanel();
  });

  // -- the server page: charts, time in state, live log ---------------------------------------------

  let sinceBase = null;

  const CHART = 60; // seconds a chart shows (as the server page's template)

  function drawCharts() {
    const series = model.series.get(data.key);
    if (!series) return;
    const last = (values) => {
      const kept = values.slice(-CHART);
      return new Array(CHART - kept.length).fill(null).concat(kept);
    };
    const finite = (values) => values.filter((v) => v !== null && v !== undefined);
    const rps = last(series.rps);
    const errors = last(series.errors);
    const p50 = last(series.p50);
    const p99 = last(series.p99);
    const rpsTop = Math.max(1, ...finite(rps), ...finite(errors));
    const latencies = finite(p99).concat(finite(p50));
    const latencyTop = latencies.length ? Math.max(...latencies) : null;
    const chart = (id, lines, top, format) => {
      const figure = $(id);
      if (!figure) return;
      for (const [name, values] of lines) {
        const group = $(`.series.${name}`, figure);
        if (group) drawLines(group, points(values, 600, 120, top));
      }
      setText($("[data-ytop]", figure), format(top));
      setText($("[data-ymid]", figure), format(top === null ? null : top / 2));
    };
    chart("#chart-rps", [["rps", rps], ["errors", errors]], rpsTop, fmtRps);
    chart("#chart-latency", [["p50", p50], ["p99", p99]], latencyTop, fmtMs);
  }

  function tickSince() {
    const element = $("[data-since]");
    if (!element) return;
    if (sinceBase === null) sinceBase = Date.now() / 1000 - Number(element.dataset.since);
    setText(element, fmtFor(Date.now() / 1000 - sinceBase));
  }

  function initLog() {
    const pre = $("#log[data-stream]");
    if (!pre || pre.dataset.following || !loggedIn || !("EventSource" in window)) return;
    pre.dataset.following = "yes";
    const replace = pre.dataset.replace === "yes";
    let first = true;
    const source = new EventSource(pre.dataset.stream);
    const append = (text, note = false) => {
      const nearBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
      if (first && replace) pre.textContent = ""; // the stream starts with the last lines again
      first = false;
      const line = note ? document.createElement("span") : document.createTextNode(`${text}\n`);
      if (note) {
        line.className = "note";
        line.textContent = `${text}\n`;
      }
      pre.append(line);
      while (pre.childNodes.length > 1000) pre.firstChild.remove();
      if (nearBottom) pre.scrollTop = pre.scrollHeight;
    };
    source.addEventListener("line", (message) => append(message.data));
    source.addEventListener("skipped", (message) => append(`… ${message.data}`, true));
    source.addEventListener("end", (message) => {
      source.close();
      append(message.data ? `— ${message.data} —` : "— the stub stopped —", true);
    });
  }

  // -- start ----------------------------------------------------------------------------------------

  function initPage() {
    if (page === "flow") initFlow();
    if (page === "server") {
      drawCharts();
      initLog();
    }
    if (model.summary) applySummary(model.summary);
  }

  for (const element of $$("#toasts .toast")) setTimeout(() => element.remove(), 6000);
  adoptPageData();
  initPage();
  if (["overview", "flow", "settings", "server"].includes(page)) connect();
  setInterval(() => {
    if (page === "server") tickSince();
  }, 1000);
})();
