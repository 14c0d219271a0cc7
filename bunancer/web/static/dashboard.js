/* bunancer dashboard: keeps the server-rendered pages live.
 *
 * The pages are complete without this script. It opens one EventSource on /events and
 * applies what arrives: `summary` (every figure, once a second) updates numbers, badges,
 * sparklines and charts in place; `server.state` turns a badge at once; `stats.tick` sets
 * how many dots travel to each server in the flow view; a server or pool coming or going
 * fetches the page's content again (?partial=1) so the markup has one source, the
 * templates. Forms marked `js-action` are sent with fetch (CSRF token in a header) and
 * answered with a toast instead of a page load. The flow view zooms and pans by its SVG's
 * viewBox, and expands a big pool in place; the overview's filter and sort live in the URL
 * query, which every re-fetch carries. Plain JS and SVG, no dependencies.
 */
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES_MAX = 300; // seconds kept per server while a page is open
  const SPARK = 60; // seconds a sparkline shows
  const FEED_MAX = 30; // as FEED in dashboard/views.py
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  const page = document.body.dataset.page;
  const loggedIn = document.body.dataset.user === "yes";
  const main = $("#main");
  const panel = $("#panel");

  // -- formatting: the same rules as dashboard/format.py ---------------------------------

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
    applyGroups(summary);
    for (const spark of $$("svg.spark[data-spark]")) {
      const series = model.series.get(spark.dataset.spark);
      if (series) drawLines(spark, points(series.rps.slice(-SPARK), 120, 28));
    }
    if (page === "server") drawCharts();
  }

  // Servers or pools on the page that the summary does not know (or the reverse): reload.
  // A page that lists only some servers (a filter, a cut table, a collapsed pool) says how
  // many each pool has (data-pool-servers), so the rows it leaves out never count as gone:
  // counting them would refresh it again and again.
  function checkStructure(summary) {
    if (page === "overview" || page === "flow" || page === "settings") {
      const shown = new Set($$("[data-key]", main).map((e) => e.dataset.key));
      const known = Object.keys(summary.servers);
      const pools = new Set($$("[data-pool]", main).map((e) => e.dataset.pool));
      const samePools = Object.keys(summary.pools).every((name) => pools.has(name)) && pools.size === Object.keys(summary.pools).length;
      const counted = $$("[data-pool-servers]", main);
      const sameServers = counted.length
        ? counted.every((e) => summary.pools[e.dataset.pool]?.servers === Number(e.dataset.poolServers)) &&
          Array.from(shown).every((key) => key in summary.servers)
        : shown.size === known.length && known.every((key) => shown.has(key));
      if (!samePools || !sameServers) scheduleRefresh();
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
    if (page === "overview" && rowsFollowState(d.pool)) scheduleRefresh();
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
      case "fault.added":
        return `fault ${d.id} set: ${d.summary}`;
      case "fault.removed":
        return `fault ${d.id} ${d.why}: ${d.summary}`;
      case "lab.started":
      case "lab.ended": {
        const arms = d.arms.map((arm) => arm.label).join(" against ");
        return `lab ${d.id} on pool ${d.pool} ${kind === "lab.started" ? "started" : d.why}: ${arms}`;
      }
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

  // A fault rule set or ended: the banner every page has, and the Faults page's list.
  function onFault(event) {
    feed(event);
    const element = $("#fault-banner");
    if (element) {
      element.hidden = !event.data.active;
      setText($("[data-field=fault-count]", element), String(event.data.active));
    }
    if (page === "faults") scheduleRefresh();
  }

  // -- the lab: a running experiment's arms and chart, live; a result's chart as PNG ------------

  function onLabTick(event) {
    const d = event.data;
    const running = $("#lab-running");
    if (!running || running.dataset.id !== d.id) {
      scheduleRefresh(); // a page from before it started: fetch the experiment's markup
      return;
    }
    setText($("[data-field=elapsed]", running), String(Math.round(d.elapsed)));
    for (const arm of d.arms) {
      const row = $(`tr[data-arm="${CSS.escape(arm.label)}"]`, running);
      if (!row) continue;
      setText($("[data-field=requests]", row), String(arm.requests));
      setText($("[data-field=rps]", row), String(arm.rps));
      setText($("[data-field=error_rate]", row), fmtPct(arm.error_rate));
      for (const q of ["p50", "p90", "p99"]) setText($(`[data-field=${q}]`, row), fmtMs(arm[q]));
      const shares = Object.entries(arm.shares).map(([id, share]) => `${id} ${Math.round(share * 100)}%`);
      setText($("[data-field=shares]", row), shares.join(", "));
    }
    if (!data.timeline) data.timeline = [];
    data.timeline.push(d.point);
    drawLabChart(data.timeline, d.markers);
    const list = $("#lab-markers");
    if (list && d.markers.length && list.children.length !== d.markers.length) {
      list.replaceChildren(
        ...d.markers.map((m) => {
          const item = document.createElement("li");
          const time = document.createElement("time");
          time.textContent = `${m.t} s`;
          item.append(time, ` ${m.text}`);
          return item;
        }),
      );
    }
  }

  function drawLabChart(timeline, markers) {
    const chart = $("#lab-chart");
    if (!chart) return;
    const svg = $("svg", chart);
    const end = timeline.length ? timeline[timeline.length - 1].t : 1;
    for (const line of $$("line.marker", svg)) line.remove();
    for (const marker of markers) {
      const line = document.createElementNS(SVG, "line");
      const x = String((600 * marker.t) / end);
      for (const [name, value] of [["class", "marker"], ["x1", x], ["x2", x], ["y1", "0"], ["y2", "160"], ["stroke", "#9ca3af"], ["stroke-dasharray", "4 4"]]) {
        line.setAttribute(name, value);
      }
      svg.append(line);
    }
    const labels = JSON.parse(chart.dataset.labels);
    const series = labels.map((label) => timeline.map((point) => point.arms[label]?.p99 ?? null));
    const numbers = series.flat().filter((v) => v !== null);
    const top = numbers.length ? Math.max(...numbers) : 0;
    series.forEach((values, index) => drawLines($(`.series.arm-${index}`, chart), points(values, 600, 160, top || null)));
    setText($("[data-ytop]", chart), top ? fmtMs(top) : "—");
    setText($("[data-ymid]", chart), top ? fmtMs(top / 2) : "—");
    setText($("[data-xend]", chart), `${timeline.length ? timeline[timeline.length - 1].t : 0} s`);
  }

  // The result as a PNG to keep: title, each arm's figures, its p99 per second, markers.
  const ARM_COLOURS = ["#2f6fde", "#16a34a", "#c026d3", "#dc2626"];
  function downloadPng(button) {
    const result = data.result;
    if (!result) return;
    const canvas = document.createElement("canvas");
    canvas.width = 1200;
    canvas.height = 520;
    const g = canvas.getContext("2d");
    g.fillStyle = "#ffffff";
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.fillStyle = "#111827";
    g.font = "bold 20px sans-serif";
    g.fillText(`bunancer lab ${result.id}: pool ${result.pool}, ${Math.round(result.elapsed)} s, split ${result.split}`, 40, 40);
    g.font = "15px sans-serif";
    result.arms.forEach((arm, index) => {
      g.fillStyle = ARM_COLOURS[index];
      g.fillRect(40, 62 + index * 24, 18, 4);
      g.fillStyle = "#111827";
      const figures = `p50 ${fmtMs(arm.p50)}, p90 ${fmtMs(arm.p90)}, p99 ${fmtMs(arm.p99)}, errors ${fmtPct(arm.error_rate)}, ${arm.requests} requests`;
      g.fillText(`${arm.label}: ${figures}`, 66, 68 + index * 24);
    });
    const left = 110, top = 80 + result.arms.length * 24, width = 1050, height = 520 - top - 50;
    const labels = result.arms.map((arm) => arm.label);
    const series = labels.map((label) => result.timeline.map((point) => point.arms[label]?.p99 ?? null));
    const highest = Math.max(0, ...series.flat().filter((v) => v !== null));
    const end = result.timeline.length ? result.timeline[result.timeline.length - 1].t : 1;
    g.strokeStyle = "#e5e7eb";
    g.fillStyle = "#6b7280";
    g.font = "13px sans-serif";
    [0, 0.5, 1].forEach((share) => {
      const y = top + height - share * height;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(left + width, y);
      g.stroke();
      g.fillText(highest ? fmtMs(highest * share) : "—", 40, y + 4);
    });
    g.fillText("0 s", left, top + height + 20);
    g.fillText(`${end} s: p99 per second`, left + width - 150, top + height + 20);
    for (const marker of result.markers) {
      const x = left + (marker.t / end) * width;
      g.strokeStyle = "#9ca3af";
      g.setLineDash([4, 4]);
      g.beginPath();
      g.moveTo(x, top);
      g.lineTo(x, top + height);
      g.stroke();
      g.setLineDash([]);
    }
    series.forEach((values, index) => {
      g.strokeStyle = ARM_COLOURS[index];
      g.lineWidth = 2;
      g.beginPath();
      let drawing = false;
      values.forEach((value, at) => {
        if (value === null) {
          drawing = false;
          return;
        }
        const x = left + (result.timeline[at].t / end) * width;
        const y = top + height - (highest ? (value / highest) * height : 0);
        if (drawing) g.lineTo(x, y);
        else g.moveTo(x, y);
        drawing = true;
      });
      g.stroke();
      g.lineWidth = 1;
    });
    const link = document.createElement("a");
    link.download = button.dataset.name;
    link.href = canvas.toDataURL("image/png");
    link.click();
  }
  document.addEventListener("click", (event) => {
    const button = event.target.closest?.("#lab-png");
    if (button) downloadPng(button);
  });

  function onTick(event) {
    for (const s of event.data.servers) {
      flow.rates.set(keyOf(s), { rps: s.rps, errors: s.errors });
    }
    sumPoolRates();
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
    on("fault.added", onFault);
    on("fault.removed", onFault);
    on("lab.tick", onLabTick);
    on("lab.started", (event) => {
      feed(event);
      if (page === "lab") scheduleRefresh();
    });
    on("lab.ended", (event) => {
      feed(event);
      if (page === "lab") scheduleRefresh();
    });
    for (const kind of ["server.added", "server.removed", "server.updated", "pool.added", "pool.removed", "pool.updated"]) {
      on(kind, onStructure);
    }
  }

  // -- reloading the page's content ------------------------------------------------------------

  let refreshTimer = null;
  let refreshSeq = 0; // a later refresh wins over an earlier one that answers late

  // What was typed into a form not yet sent survives a redraw of the page or the panel:
  // values by the form's action and the field's name, put back into the new markup.
  function typedValues(root) {
    const kept = [];
    for (const form of $$("form[data-dirty]", root)) {
      for (const field of $$("input, select, textarea", form)) {
        if (field.type !== "hidden" && field.name) kept.push([form.getAttribute("action"), field.name, field.value]);
      }
    }
    return kept;
  }

  function restoreTyped(root, kept) {
    for (const [action, name, value] of kept) {
      for (const form of $$(`form[action="${CSS.escape(action)}"]`, root)) {
        const field = form.elements.namedItem(name);
        if (field && "value" in field) {
          field.value = value;
          form.dataset.dirty = "1";
        }
      }
    }
  }

  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(refresh, 150);
  }

  async function refresh() {
    refreshTimer = null;
    if (!["overview", "flow", "settings", "server", "faults", "lab"].includes(page)) return;
    const ticket = (refreshSeq += 1);
    // The query is the page's view (filter, sort, expanded pools): the new content keeps it.
    const query = new URLSearchParams(location.search);
    query.set("partial", "1");
    let response;
    try {
      response = await fetch(`${location.pathname}?${query}`, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    } catch (error) {
      return;
    }
    if (ticket !== refreshSeq) return;
    if (response.status === 404 && page === "server") {
      banner("This server is no longer in the pool.");
      return;
    }
    if (!response.ok) return;
    const html = await response.text();
    if (ticket !== refreshSeq) return;
    const openMenus = $$("details.menu[open]", main).map((d) => d.closest("[data-key]")?.dataset.key);
    const log = $("#log", main);
    const focused = focusState();
    const typed = typedValues(main);
    main.innerHTML = html;
    restoreTyped(main, typed);
    restoreFocus(focused);
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

  // The field being typed in (the overview's search box) stays focused, with what was typed
  // since the request left and the caret where it was.
  function focusState() {
    const element = document.activeElement;
    if (!element || !element.id || !main.contains(element)) return null;
    const typing = element.matches("input:not([type=hidden])");
    return { id: element.id, value: typing ? element.value : null, caret: typing ? [element.selectionStart, element.selectionEnd] : null };
  }

  function restoreFocus(state) {
    const element = state && document.getElementById(state.id);
    if (!element) return;
    if (state.value !== null) element.value = state.value;
    element.focus();
    if (state.caret && state.caret[0] !== null) {
      try {
        element.setSelectionRange(state.caret[0], state.caret[1]);
      } catch (error) {
        // an input kind without a caret
      }
    }
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
    if (form && form.classList.contains("js-action")) form.dataset.dirty = "1";
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
  const flow = { routes: new Map(), rates: new Map(), poolRates: new Map(), carry: new Map(), dots: [], layer: null, running: false, last: 0 };

  function poolOf(key) {
    return key.slice(0, key.indexOf("/"));
  }

  // A collapsed pool's dots follow the pool's traffic: the sum of its servers' last second.
  function sumPoolRates() {
    flow.poolRates.clear();
    for (const [key, rate] of flow.rates) {
      const total = flow.poolRates.get(poolOf(key)) || { rps: 0, errors: 0 };
      total.rps += rate.rps;
      total.errors += rate.errors;
      flow.poolRates.set(poolOf(key), total);
    }
  }

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
    for (const path of $$("path[data-route]")) flow.routes.set(path.dataset.route, { path, length: path.getTotalLength(), pool: null });
    for (const path of $$("path[data-route-pool]")) {
      const pool = path.dataset.routePool;
      flow.routes.set(`pool:${pool}`, { path, length: path.getTotalLength(), pool });
    }
    if (model.summary) {
      for (const key of Array.from(flow.rates.keys())) {
        if (!(key in model.summary.servers)) flow.rates.delete(key); // gone: not in its pool's sum
      }
      for (const [key, figures] of Object.entries(model.summary.servers)) {
        if (!flow.rates.has(key)) flow.rates.set(key, { rps: figures.rps, errors: figures.errors });
      }
    }
    sumPoolRates();
    initZoom();
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
      const rate = route.pool ? flow.poolRates.get(route.pool) : flow.rates.get(key);
      const state = route.pool ? null : model.states.get(key);
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

  // A collapsed pool's node: its servers counted by state, as a bar and in figures, and the
  // spread of their shares of the requests (as share_spread and spread_text in Python).
  function spreadText(servers) {
    const total = servers.reduce((sum, s) => sum + s.rps, 0);
    const shares = servers.filter((s) => s.state === "healthy").map((s) => s.rps / total);
    if (!total || !shares.length) return "no requests in the last second";
    return `busiest ${fmtPct(Math.max(...shares))} · quietest ${fmtPct(Math.min(...shares))} · even ${fmtPct(1 / shares.length)}`;
  }

  function applyGroups(summary) {
    const groups = $$("[data-group]", main);
    if (!groups.length) return;
    const byPool = new Map();
    for (const [key, figures] of Object.entries(summary.servers)) {
      const pool = poolOf(key);
      if (!byPool.has(pool)) byPool.set(pool, []);
      byPool.get(pool).push(figures);
    }
    for (const group of groups) {
      const servers = byPool.get(group.dataset.group) || [];
      const counts = {};
      for (const s of servers) counts[s.state] = (counts[s.state] || 0) + 1;
      const width = Number($(".bar .track", group).getAttribute("width"));
      let x = 0;
      for (const segment of $$("[data-bar]", group)) {
        const w = servers.length ? (width * (counts[segment.dataset.bar] || 0)) / servers.length : 0;
        segment.setAttribute("x", x.toFixed(1));
        segment.setAttribute("width", w.toFixed(1));
        x += w;
      }
      for (const cell of $$("[data-group-cell]", group)) {
        const n = counts[cell.dataset.groupCell] || 0;
        setText($("[data-group-count]", cell), String(n));
        cell.classList.toggle("zero", n === 0);
      }
      setText($("[data-group-spread]", group), spreadText(servers));
    }
  }

  // -- the flow view: zoom and pan ------------------------------------------------------------
  //
  // The view is a centre and a scale (screen pixels per graph unit); the viewBox is made from
  // them and the SVG's size on screen, so the two always have the same proportions and a
  // screen point maps to the graph by a plain offset and scale. The SVG itself keeps a
  // bounded height (the stylesheet): the user zooms instead of scrolling.

  const ZOOM_MAX = 3;
  const ZOOM_STEP = 1.25; // the + and − buttons
  const READABLE = 0.5; // below this scale names blur: the first view shows an expanded pool instead
  const FOCUS = 0.85; // the scale an expanded pool is shown at when it does not fit
  const DRAG = 4; // pixels a press moves before it pans instead of clicking
  const view = { svg: null, scale: 1, cx: 0, cy: 0, fitted: true, focus: null, drag: null, dragged: false };

  function graphSize() {
    return { w: Number(view.svg.getAttribute("width")), h: Number(view.svg.getAttribute("height")) };
  }

  function applyView() {
    const box = view.svg.getBoundingClientRect();
    if (!box.width || !box.height) return;
    const w = box.width / view.scale;
    const h = box.height / view.scale;
    view.svg.setAttribute("viewBox", [view.cx - w / 2, view.cy - h / 2, w, h].map((n) => n.toFixed(1)).join(" "));
    view.svg.dataset.scale = view.scale.toFixed(3);
  }

  function fitScale() {
    const box = view.svg.getBoundingClientRect();
    const size = graphSize();
    return Math.min(box.width / size.w, box.height / size.h, 1); // never larger than drawn
  }

  function fitView() {
    const size = graphSize();
    Object.assign(view, { scale: fitScale(), cx: size.w / 2, cy: size.h / 2, fitted: true });
    applyView();
  }

  // A pool's node and servers: whole if they fit at a readable scale, else from the top.
  function focusPool(name) {
    const block = $(`[data-block="${CSS.escape(name)}"]`, view.svg);
    if (!block) return fitView();
    const r = block.getBBox();
    const box = view.svg.getBoundingClientRect();
    const size = graphSize();
    const margin = 24;
    const scale = Math.min(Math.max(Math.min(box.width / size.w, box.height / (r.height + 2 * margin)), FOCUS), 1);
    const cx = size.w * scale <= box.width ? size.w / 2 : r.x + r.width / 2;
    const cy = (r.height + 2 * margin) * scale <= box.height ? r.y + r.height / 2 : r.y - margin + box.height / scale / 2;
    Object.assign(view, { scale, cx, cy, fitted: false });
    applyView();
  }

  function firstView() {
    const expanded = (view.svg.dataset.expanded || "").split(" ").filter(Boolean);
    if (fitScale() < READABLE && expanded.length) focusPool(expanded[0]);
    else fitView();
  }

  function initZoom() {
    const svg = $("#flow", main);
    const known = view.svg !== null;
    view.svg = svg;
    if (!svg) return;
    const tools = $(".flow-tools", main);
    if (tools) tools.hidden = false;
    if (view.focus !== null) {
      const name = view.focus; // a pool just expanded ("" when one was collapsed)
      view.focus = null;
      if (name) focusPool(name);
      else firstView();
    } else if (!known || view.fitted) {
      firstView();
    } else {
      applyView(); // a live refresh: the user's zoom and place stay
    }
  }

  function zoomBy(factor, clientX, clientY) {
    const box = view.svg.getBoundingClientRect();
    const x = clientX ?? box.left + box.width / 2;
    const y = clientY ?? box.top + box.height / 2;
    const scale = Math.min(Math.max(view.scale * factor, fitScale() / 2), ZOOM_MAX);
    // The graph point under the pointer stays under it.
    const px = view.cx + (x - box.left - box.width / 2) / view.scale;
    const py = view.cy + (y - box.top - box.height / 2) / view.scale;
    view.cx = px - ((px - view.cx) * view.scale) / scale;
    view.cy = py - ((py - view.cy) * view.scale) / scale;
    view.scale = scale;
    view.fitted = false;
    applyView();
  }

  function inFlow(event) {
    return view.svg !== null && view.svg.isConnected && event.target instanceof Element && view.svg.contains(event.target);
  }

  main.addEventListener(
    "wheel",
    (event) => {
      if (!inFlow(event)) return;
      event.preventDefault();
      const unit = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? 400 : 1; // lines, pages
      const delta = Math.max(-300, Math.min(300, event.deltaY * unit));
      zoomBy(Math.exp(-delta * 0.0015), event.clientX, event.clientY);
    },
    { passive: false },
  );
  main.addEventListener("pointerdown", (event) => {
    view.dragged = false;
    if (!inFlow(event) || event.button !== 0) return;
    view.drag = { id: event.pointerId, x: event.clientX, y: event.clientY, cx: view.cx, cy: view.cy };
  });
  main.addEventListener("pointermove", (event) => {
    const drag = view.drag;
    if (!drag || event.pointerId !== drag.id || !view.svg) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (!view.dragged) {
      if (Math.hypot(dx, dy) < DRAG) return;
      view.dragged = true;
      view.svg.setPointerCapture(drag.id);
      view.svg.classList.add("panning");
    }
    Object.assign(view, { cx: drag.cx - dx / view.scale, cy: drag.cy - dy / view.scale, fitted: false });
    applyView();
  });
  const endDrag = (event) => {
    if (!view.drag || event.pointerId !== view.drag.id) return;
    view.drag = null;
    view.svg?.classList.remove("panning");
  };
  main.addEventListener("pointerup", endDrag);
  main.addEventListener("pointercancel", endDrag);
  // The click that ends a drag is not a click on the node under the pointer.
  main.addEventListener(
    "click",
    (event) => {
      if (!view.dragged) return;
      view.dragged = false;
      if (!inFlow(event)) return;
      event.preventDefault();
      event.stopPropagation();
    },
    true,
  );
  main.addEventListener("dragstart", (event) => {
    if (inFlow(event)) event.preventDefault(); // a node is a link: dragging it would not pan
  });
  window.addEventListener("resize", () => {
    if (view.svg?.isConnected) view.fitted ? fitView() : applyView();
  });

  // -- views kept in the URL: expanded pools, the overview's filter and sort ---------------------

  // Shows another view of the same page: its URL goes in the history (a reload or a link
  // shows the same), and the content is fetched again (?partial=1 with that query).
  function showView(url, replace = false) {
    const target = new URL(url, location.href);
    if (replace) history.replaceState(null, "", target.pathname + target.search);
    else history.pushState(null, "", target.pathname + target.search + target.hash);
    refresh();
  }
  window.addEventListener("popstate", () => refresh());

  // A state change adds or removes overview rows only under a state filter, or in a table
  // cut to its worst rows; other tables keep their rows in place (nothing jumps under the
  // pointer) until the next refresh.
  function rowsFollowState(pool) {
    const form = $("#server-view", main);
    if (!form) return false;
    const section = $(`section.pool[data-pool="${CSS.escape(pool)}"]`, main);
    const byState = ["trouble", "state"].includes(form.elements.sort.value);
    return form.elements.state.value !== "all" || (byState && section?.dataset.cut !== undefined);
  }

  // At once, before the server's answer: the rows on the page that no longer match.
  function hideUnmatched(form) {
    const state = form.elements.state.value;
    const text = form.elements.q.value.trim().toLowerCase();
    for (const row of $$("tr.server[data-key]", main)) {
      const key = row.dataset.key;
      const rowState = model.states.get(key);
      const stateOk = state === "all" || !rowState || (state === "not-healthy" ? rowState !== "healthy" : rowState === state);
      const id = key.slice(key.indexOf("/") + 1).toLowerCase();
      const address = ($(".addr", row)?.textContent || "").toLowerCase();
      row.hidden = !(stateOk && (!text || id.includes(text) || address.includes(text)));
    }
  }

  let viewTimer = null;

  function applyViewForm(form, delay) {
    clearTimeout(viewTimer);
    hideUnmatched(form);
    viewTimer = setTimeout(() => {
      const query = new URLSearchParams();
      for (const element of Array.from(form.elements)) {
        const value = element.name ? element.value.trim() : "";
        if (value && value !== element.dataset.default) query.append(element.name, value);
      }
      const search = query.toString();
      showView(search ? `/?${search}` : "/", true);
    }, delay);
  }

  document.addEventListener("change", (event) => {
    const form = event.target.closest?.("form#server-view");
    if (form && event.target.id !== "view-q") applyViewForm(form, 0);
  });
  document.addEventListener("input", (event) => {
    if (event.target.id === "view-q") applyViewForm(event.target.form, 250);
  });
  document.addEventListener("submit", (event) => {
    if (event.target.id !== "server-view") return;
    event.preventDefault();
    applyViewForm(event.target, 0);
  });

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
      // partial=1: a refresh of the page's own, which does not keep the login alive.
      const url = `${panelUrl}${panelUrl.includes("?") ? "&" : "?"}partial=1`;
      response = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    } catch (error) {
      return;
    }
    if (!response.ok) {
      closePanel();
      return;
    }
    const typed = typedValues(panel);
    panel.innerHTML = await response.text();
    restoreTyped(panel, typed);
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
    const plain = !(event.metaKey || event.ctrlKey || event.shiftKey); // else a new tab: the browser's
    const zoom = event.target.closest("[data-zoom]");
    if (zoom && view.svg) {
      if (zoom.dataset.zoom === "fit") fitView();
      else zoomBy(zoom.dataset.zoom === "in" ? ZOOM_STEP : 1 / ZOOM_STEP);
      return;
    }
    const link = event.target.closest("a[data-flow-link], a[data-view-link]");
    if (link && plain) {
      event.preventDefault();
      if (link.dataset.focus !== undefined) view.focus = link.dataset.focus;
      showView(link.getAttribute("href"));
      return;
    }
    const node = event.target.closest("a.node[data-panel]");
    if (node && plain) {
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
  if (["overview", "flow", "settings", "server", "faults", "lab"].includes(page)) connect();
  setInterval(() => {
    if (page === "server") tickSince();
  }, 1000);
})();
