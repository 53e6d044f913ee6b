/* fastgw dashboard: reads GET /stats from the admin listener and draws SVG charts.
   Self-contained (no libraries, no network besides this origin). The admin token comes
   from #token=... once, or from a prompt, and stays in sessionStorage for this tab. */
(function () {
  "use strict";

  var SVGNS = "http://www.w3.org/2000/svg";
  var COLORS = { calls: "#4f46e5", "2xx": "#16a34a", "3xx": "#2563eb", "4xx": "#f59e0b", "5xx": "#dc2626",
    avg: "#0891b2", p99: "#c026d3" };
  var RANGES = { 300: { step: 10, every: 5000 }, 3600: { step: 60, every: 15000 },
    86400: { step: 900, every: 60000 }, 2592000: { step: 21600, every: 300000 } };
  var state = { range: 300, stage: "", timer: null, data: null, inflight: false };
  var REDIS_RESULT = { ok: "Answered", error: "Error reply", failed: "No reply (failed or too slow)" };

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    for (var k in attrs || {}) n.setAttribute(k, attrs[k]);
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function sv(tag, attrs, parent) {
    var n = document.createElementNS(SVGNS, tag);
    for (var k in attrs || {}) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }

  /* ---------------------------------------------------------------- token */
  function takeHashToken() {
    var m = /(?:^#|&)token=([^&]+)/.exec(location.hash || "");
    if (m) {
      sessionStorage.setItem("fastgw-token", decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);  // keep it out of history
    }
  }
  function token() { return sessionStorage.getItem("fastgw-token") || ""; }
  function askToken(message) {
    $("token-err").textContent = message || "";
    $("token-modal").classList.remove("hidden");
    $("token-input").focus();
  }

  /* ---------------------------------------------------------------- formatting */
  function fmtInt(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(n >= 1e10 ? 0 : 1) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(n >= 1e5 ? 0 : 1) + "k";
    return String(Math.round(n));
  }
  function fmtExact(n) { return Math.round(n).toLocaleString("en-US"); }
  function msText(v) {
    var t = fmtMs(v);
    return / s$/.test(t) ? t : t + " ms";
  }

  function fmtMs(v) {
    if (!v) return "0";
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }
  function fmtPct(x) { return (x * 100).toFixed(x >= 0.1 ? 1 : 2) + "%"; }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  function fmtTime(t, span, long) {
    var d = new Date(t * 1000);
    var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (span <= 600) return hm + ":" + pad(d.getSeconds());
    if (span <= 86400) return long ? MONTHS[d.getMonth()] + " " + d.getDate() + ", " + hm : hm;
    return MONTHS[d.getMonth()] + " " + d.getDate() + (long ? ", " + hm : "");
  }
  /* The top of a 4-tick axis: 4 x a round tick (1, 2, 2.5, 5 x 10^k). */
  function niceMax(v) {
    if (v <= 0) return 4;
    var raw = v / 4, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= raw) return 4 * steps[i] * p;
    return 40 * p;
  }

  /* ---------------------------------------------------------------- charts */
  var tooltip = null;
  function showTip(ev, title, rows) {
    tooltip.innerHTML = "";
    tooltip.appendChild(el("div", { "class": "t" }, title));
    rows.forEach(function (r) {
      var row = el("div", { "class": "r" });
      row.appendChild(swatch(r.color, r.name));
      row.appendChild(el("b", {}, r.value));
      tooltip.appendChild(row);
    });
    tooltip.classList.remove("hidden");
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tooltip.offsetWidth, h = tooltip.offsetHeight;
    if (x + w > window.innerWidth - 8) x = ev.clientX - w - 14;
    if (y + h > window.innerHeight - 8) y = ev.clientY - h - 14;
    tooltip.style.left = x + "px";
    tooltip.style.top = y + "px";
  }
  function hideTip() { tooltip.classList.add("hidden"); }

  // A colour square and a series name (legends and tooltips).
  function swatch(color, name) {
    var item = el("span");
    var sw = el("i");
    sw.style.background = color;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(name));
    return item;
  }

  function legend(id, series) {
    var box = $(id);
    box.innerHTML = "";
    series.forEach(function (s) { box.appendChild(swatch(s.color, s.name)); });
  }

  /* kind: "area" (one filled series), "stack" (stacked bars), "line" (several lines). */
  function chart(id, times, series, kind, fmt, span) {
    var box = $(id);
    box.innerHTML = "";
    var W = box.clientWidth || 600, H = box.clientHeight || 220;
    var L = 52, R = 14, T = 10, B = 26;
    var w = W - L - R, h = H - T - B, n = times.length;
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, role: "img" }, box);
    var total = 0, max = 0;
    for (var i = 0; i < n; i++) {
      var stackSum = 0;
      series.forEach(function (s) {
        var v = s.values[i] || 0;
        total += v;
        stackSum += v;
        if (kind !== "stack" && v > max) max = v;
      });
      if (kind === "stack" && stackSum > max) max = stackSum;
    }
    svg.setAttribute("data-total", String(Math.round(total * 1000) / 1000));
    var ymax = niceMax(max * 1.05);
    var axis = sv("g", { "class": "axis" }, svg);
    for (var k = 0; k <= 4; k++) {
      var yv = ymax * k / 4, y = T + h - h * k / 4;
      sv("line", { x1: L, x2: L + w, y1: y, y2: y, "class": k === 0 ? "baseline" : "gridline" }, axis);
      sv("text", { x: L - 8, y: y + 4, "text-anchor": "end" }, axis).textContent = fmt(yv);
    }
    var slot = n > 0 ? w / n : w;
    function xAt(idx) { return L + slot * (idx + 0.5); }
    var labels = Math.max(2, Math.min(7, Math.floor(w / 110)));
    var every = Math.max(1, Math.ceil(n / labels));
    for (var j = 0; j < n; j += every) {
      sv("text", { x: xAt(j), y: H - 6, "text-anchor": "middle" }, axis).textContent = fmtTime(times[j], span, false);
    }
    function yAt(v) { return T + h - (v / ymax) * h; }
    var plot = sv("g", {}, svg);
    if (kind === "stack") {
      var bw = Math.max(1, Math.min(28, slot * 0.72));
      series.forEach(function (s) { sv("g", { "data-series": s.name, fill: s.color }, plot); });
      var groups = plot.childNodes;
      for (var b = 0; b < n; b++) {
        var acc = 0;
        series.forEach(function (s, si) {
          var v = s.values[b] || 0;
          if (!v) return;
          var y0 = yAt(acc), y1 = yAt(acc + v);
          acc += v;
          sv("rect", { x: xAt(b) - bw / 2, y: y1, width: bw, height: Math.max(0.5, y0 - y1), rx: 1.5,
            "data-v": v }, groups[si]);
        });
      }
    } else {
      series.forEach(function (s) {
        var g = sv("g", { "data-series": s.name }, plot);
        if (!n) return;
        var d = "";
        for (var p = 0; p < n; p++) d += (p ? "L" : "M") + xAt(p).toFixed(1) + "," + yAt(s.values[p] || 0).toFixed(1);
        if (kind === "area") {
          var grad = "g" + id.replace(/\W/g, "");
          var defs = sv("defs", {}, svg);
          var lg = sv("linearGradient", { id: grad, x1: 0, y1: 0, x2: 0, y2: 1 }, defs);
          sv("stop", { offset: "0%", "stop-color": s.color, "stop-opacity": 0.28 }, lg);
          sv("stop", { offset: "100%", "stop-color": s.color, "stop-opacity": 0.02 }, lg);
          sv("path", { d: d + "L" + xAt(n - 1).toFixed(1) + "," + (T + h) + "L" + xAt(0).toFixed(1) + "," + (T + h) + "Z",
            fill: "url(#" + grad + ")" }, g);
        }
        sv("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round",
          "stroke-linecap": "round" }, g);
      });
    }
    if (!total) {
      sv("text", { x: L + w / 2, y: T + h / 2, "text-anchor": "middle", "class": "nodata" }, svg).textContent =
        "No traffic in this period";
    }
    var guide = sv("line", { x1: 0, x2: 0, y1: T, y2: T + h, "class": "guide", visibility: "hidden" }, svg);
    var dots = series.map(function (s) {
      return kind === "stack" ? null : sv("circle", { r: 3.5, fill: "#fff", stroke: s.color, "stroke-width": 2,
        visibility: "hidden" }, svg);
    });
    var hit = sv("rect", { x: L, y: T, width: w, height: h, fill: "transparent" }, svg);
    hit.addEventListener("mousemove", function (ev) {
      if (!n) return;
      var rect = svg.getBoundingClientRect();
      var px = (ev.clientX - rect.left) * (W / rect.width);
      var idx = Math.max(0, Math.min(n - 1, Math.floor((px - L) / slot)));
      var x = xAt(idx);
      guide.setAttribute("x1", x); guide.setAttribute("x2", x); guide.setAttribute("visibility", "visible");
      dots.forEach(function (dot, si) {
        if (!dot) return;
        dot.setAttribute("cx", x); dot.setAttribute("cy", yAt(series[si].values[idx] || 0));
        dot.setAttribute("visibility", "visible");
      });
      showTip(ev, fmtTime(times[idx], span, true), series.map(function (s) {
        return { name: s.name, color: s.color, value: fmt(s.values[idx] || 0, true) };
      }));
    });
    hit.addEventListener("mouseleave", function () {
      guide.setAttribute("visibility", "hidden");
      dots.forEach(function (dot) { if (dot) dot.setAttribute("visibility", "hidden"); });
      hideTip();
    });
  }

  /* ---------------------------------------------------------------- data */
  function query() {
    var r = RANGES[state.range];
    var q = "range=" + state.range + "&step=" + r.step;
    if (state.stage) {
      var parts = state.stage.split("/");
      q += "&service=" + encodeURIComponent(parts[0]) + "&stage=" + encodeURIComponent(parts.slice(1).join("/"));
    }
    return "/stats?" + q;
  }

  function load() {
    if (state.inflight) return;
    if (!token()) { askToken(); return; }
    state.inflight = true;
    fetch(query(), { headers: { Authorization: "Bearer " + token() }, cache: "no-store" })
      .then(function (res) {
        if (res.status === 401) {
          sessionStorage.removeItem("fastgw-token");
          askToken("That token was refused.");
          throw new Error("unauthorized");
        }
        if (!res.ok) throw new Error("HTTP " + res.status);
        return res.json();
      })
      .then(function (data) {
        state.data = data;
        render(data);
        $("status").textContent = state.range === 300 ? "Live · refreshing every 5 s" :
          "Refreshing every " + Math.round(RANGES[state.range].every / 1000) + " s";
        $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
        return loadTargets();
      })
      .then(function () { document.body.setAttribute("data-loaded", "1"); })
      .catch(function (err) {
        if (err.message !== "unauthorized") $("status").textContent = "Cannot reach the admin API (" + err.message + ")";
      })
      .then(function () { state.inflight = false; });
  }

  /* The backend targets and whether each is in use (GET /targets): after the stats, so one
     refresh shows both; a gateway without the endpoint leaves the panel saying so. */
  function loadTargets() {
    return fetch("/targets", { headers: { Authorization: "Bearer " + token() }, cache: "no-store" })
      .then(function (res) { return res.ok ? res.json() : null; })
      .catch(function () { return null; })
      .then(function (data) { renderTargets(data ? data.targets : null); });
  }

  function targetState(t) {
    if (t.passed_over_for > 0) {
      return ["rate-bad", "Passed over · failed connections (" + Math.ceil(t.passed_over_for) + " s left)"];
    }
    if (t.active === "unhealthy") return ["rate-bad", "Passed over · health checks"];
    if (t.active === "unchecked") return ["rate-warn", "In use · not checked yet"];
    if (t.failed_connects > 0) {
      return ["rate-warn", "In use · " + t.failed_connects + " failed connection" +
        (t.failed_connects === 1 ? "" : "s") + " counted"];
    }
    return ["rate-ok", t.active === "healthy" ? "In use · healthy" : "In use"];
  }

  function renderTargets(rows) {
    var body = $("targets").tBodies[0];
    body.innerHTML = "";
    if (!rows) {
      var none = el("tr", { "class": "empty" });
      none.appendChild(el("td", { colspan: 4 }, "Not available"));
      body.appendChild(none);
      $("targets-count").textContent = "";
      return;
    }
    if (state.stage) rows = rows.filter(function (t) { return t.service + "/" + t.stage === state.stage; });
    var down = rows.filter(function (t) { return targetState(t)[0] === "rate-bad"; }).length;
    $("targets-count").textContent = rows.length + " targets" + (down ? " · " + down + " passed over" : "");
    rows.forEach(function (t) {
      var tr = el("tr", { "data-target": t.target });
      tr.appendChild(el("td", { "class": "res" }, t.target));
      tr.appendChild(el("td", {}, t.service + " · " + t.stage));
      tr.appendChild(el("td", { "class": "num" }, String(t.weight)));
      var st = targetState(t);
      tr.appendChild(el("td", {}, "")).appendChild(el("span", { "class": st[0] }, st[1]));
      body.appendChild(tr);
    });
  }

  function schedule() {
    if (state.timer) clearInterval(state.timer);
    state.timer = setInterval(load, RANGES[state.range].every);
  }

  function fillStages(services) {
    var sel = $("stage");
    var want = [""];
    Object.keys(services).sort().forEach(function (svc) {
      services[svc].forEach(function (st) { want.push(svc + "/" + st); });
    });
    var have = Array.prototype.map.call(sel.options, function (o) { return o.value; });
    if (have.join("|") === want.join("|")) return;
    sel.innerHTML = "";
    want.forEach(function (v) {
      sel.appendChild(el("option", { value: v }, v ? v.replace("/", " · ") : "All stages"));
    });
    sel.value = want.indexOf(state.stage) >= 0 ? state.stage : "";
  }

  function render(d) {
    fillStages(d.services || {});
    var t = d.totals, span = d.to - d.from;
    $("c-calls").textContent = fmtExact(t.calls);
    $("c-rate").textContent = (t.calls / Math.max(1, span)).toFixed(t.calls / span >= 10 ? 0 : 2) + " req/s average";
    $("c-err").textContent = fmtPct(t.error_rate);
    $("c-err").className = "value " + (t.error_rate >= 0.05 ? "rate-bad" : t.error_rate >= 0.01 ? "rate-warn" : "");
    $("c-err-sub").textContent = fmtExact(t["4xx"]) + " client · " + fmtExact(t["5xx"]) + " server errors";
    $("c-avg").textContent = fmtMs(t.avg_ms) + (t.avg_ms >= 1000 ? "" : " ms");
    $("c-up").textContent = "backend " + fmtMs(t.upstream_avg_ms) + " ms · gateway " + fmtMs(t.gateway_avg_ms) + " ms";
    $("c-p99").textContent = fmtMs(t.p99_ms) + (t.p99_ms >= 1000 ? "" : " ms");
    $("c-p50").textContent = "p50 " + fmtMs(t.p50_ms) + " ms · p95 " + fmtMs(t.p95_ms) + " ms";

    var times = d.series.map(function (p) { return p.t; });
    var col = function (k) { return d.series.map(function (p) { return p[k]; }); };
    var callSeries = [{ name: "Calls", color: COLORS.calls, values: col("calls") }];
    var statusSeries = ["2xx", "3xx", "4xx", "5xx"].map(function (k) {
      return { name: k, color: COLORS[k], values: col(k) };
    });
    var latSeries = [{ name: "Average", color: COLORS.avg, values: col("avg_ms") },
      { name: "p99", color: COLORS.p99, values: col("p99_ms") }];
    var count = function (v, exact) { return exact ? fmtExact(v) : fmtInt(v); };
    legend("lg-calls", [{ name: "Calls per " + stepName(d.step), color: COLORS.calls }]);
    legend("lg-status", statusSeries);
    legend("lg-latency", latSeries);
    chart("ch-calls", times, callSeries, "area", count, span);
    chart("ch-status", times, statusSeries, "stack", count, span);
    chart("ch-latency", times, latSeries, "line", function (v) { return fmtMs(v).replace(/\.0+$/, ""); }, span);
    renderResources(d.resources);
    renderMini("unmatched", d.unmatched, function (u) { return [u.host === "*" ? "other hosts" : u.host, fmtExact(u.calls)]; });
    renderMini("consumers", (d.consumers || []).slice().sort(function (a, b) { return b.calls - a.calls; }).slice(0, 8),
      function (c) { return [c.name, fmtExact(c.calls)]; });
    /* Only with a redis section (its keys exist once a worker has used Redis). */
    $("redis-panel").classList.toggle("hidden", !(d.redis && d.redis.length));
    renderMini("redis", d.redis, function (r) {
      return [REDIS_RESULT[r.result] || r.result, fmtExact(r.calls), "avg " + msText(r.avg_ms),
        "p99 " + msText(r.p99_ms)];
    });
  }

  function stepName(step) {
    if (step < 60) return step + " s";
    if (step < 3600) return step / 60 + " min";
    if (step < 86400) return step / 3600 + " h";
    return step / 86400 + " day";
  }

  function renderResources(rows) {
    var body = $("resources").tBodies[0];
    body.innerHTML = "";
    rows = rows.filter(function (r) { return r.calls > 0; });
    $("res-count").textContent = rows.length + " with traffic in this period";
    if (!rows.length) {
      var tr = el("tr", { "class": "empty" });
      tr.appendChild(el("td", { colspan: 9 }, "No calls in this period"));
      body.appendChild(tr);
      return;
    }
    var group = null;
    rows.forEach(function (r) {
      var g = r.service + " · " + r.stage;
      if (g !== group) {
        group = g;
        var calls = rows.filter(function (x) { return x.service === r.service && x.stage === r.stage; })
          .reduce(function (a, x) { return a + x.calls; }, 0);
        var gr = el("tr", { "class": "group" });
        var td = el("td", { colspan: 9 }, g);
        td.appendChild(el("span", { "class": "muted" }, fmtExact(calls) + " calls"));
        gr.appendChild(td);
        body.appendChild(gr);
      }
      var tr = el("tr", { "data-key": r.key });
      var depth = rows.filter(function (x) {
        return x.service === r.service && x.stage === r.stage && x.resource !== r.resource &&
          r.resource.indexOf(x.resource.replace(/\/$/, "") + "/") === 0;
      }).reduce(function (a, x) { return Math.max(a, x.resource.split("/").length - 1); }, 0);
      var res = el("td", { "class": "res" });
      if (depth > 0) res.appendChild(el("span", { "class": "tree" }, new Array(depth + 1).join("\u00a0\u00a0") + "└ "));
      res.appendChild(document.createTextNode(r.resource));
      tr.appendChild(res);
      var mt = el("td");
      mt.appendChild(el("span", { "class": "m m-" + r.method }, r.method));
      tr.appendChild(mt);
      tr.appendChild(el("td", { "class": "num calls" }, fmtExact(r.calls)));
      tr.appendChild(el("td", { "class": "num" }, fmtExact(r["2xx"])));
      tr.appendChild(el("td", { "class": "num" }, fmtExact(r["4xx"])));
      tr.appendChild(el("td", { "class": "num" }, fmtExact(r["5xx"])));
      var er = el("td");
      var bar = el("span", { "class": "bar" });
      var fill = el("b");
      fill.style.width = Math.min(100, r.error_rate * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      er.appendChild(bar);
      er.appendChild(el("span", { "class": r.error_rate >= 0.05 ? "rate-bad" : r.error_rate >= 0.01 ? "rate-warn" : "rate-ok" },
        fmtPct(r.error_rate)));
      tr.appendChild(er);
      tr.appendChild(el("td", { "class": "num" }, fmtMs(r.avg_ms)));
      tr.appendChild(el("td", { "class": "num" }, fmtMs(r.p99_ms)));
      body.appendChild(tr);
    });
  }

  function renderMini(id, rows, cells) {
    var body = $(id).tBodies[0];
    body.innerHTML = "";
    rows = (rows || []).filter(function (r) { return r.calls > 0; });
    if (!rows.length) {
      var tr = el("tr", { "class": "empty" });
      tr.appendChild(el("td", {}, "None in this period"));
      body.appendChild(tr);
      return;
    }
    rows.forEach(function (r) {
      var tr = el("tr");
      cells(r).forEach(function (c) { tr.appendChild(el("td", {}, c)); });
      body.appendChild(tr);
    });
  }

  /* ---------------------------------------------------------------- wiring */
  function init() {
    tooltip = $("tooltip");
    takeHashToken();
    Array.prototype.forEach.call(document.querySelectorAll("#ranges button"), function (b) {
      b.addEventListener("click", function () {
        Array.prototype.forEach.call(document.querySelectorAll("#ranges button"), function (x) { x.classList.remove("on"); });
        b.classList.add("on");
        state.range = Number(b.getAttribute("data-range"));
        schedule();
        load();
      });
    });
    $("stage").addEventListener("change", function () { state.stage = this.value; load(); });
    $("token-btn").addEventListener("click", function () { askToken(); });
    $("token-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      sessionStorage.setItem("fastgw-token", $("token-input").value.trim());
      $("token-input").value = "";
      $("token-modal").classList.add("hidden");
      load();
    });
    window.addEventListener("resize", function () { if (state.data) render(state.data); });
    schedule();
    load();
  }
  document.addEventListener("DOMContentLoaded", init);
})();
