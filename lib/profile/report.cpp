// report.html: see profile/report.h. The page is static text plus the summary JSON; the script
// renders every section from that JSON, so the numbers in the page are the summary's.
#include "profile/report.h"

namespace dsk::profile {
namespace {

// ---------------------------------------------------------------------------
// The page. No external URL of any kind: SVG is built as markup (the HTML parser puts it in the
// SVG namespace), styles and script are inline.
const char* const kHead = R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dsk profile</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 16px 24px 48px; color: #1d2127; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #d8dde3; padding-bottom: 4px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
th { background: #f5f7f9; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.shape { font-family: ui-monospace, monospace; font-size: 12px; color: #555; word-break: break-all; }
pre { background: #f5f7f9; padding: 10px; overflow-x: auto; font-size: 12px; }
.verdict { border-left: 5px solid #c0392b; background: #fdf3f2; padding: 10px 14px; }
.verdict .bound { font-size: 18px; font-weight: 700; }
.muted { color: #667; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 10px; }
.card { border: 1px solid #e3e7eb; border-radius: 6px; padding: 8px 12px; }
.card .label { color: #667; font-size: 12px; }
.card .value { font-size: 20px; font-weight: 600; }
svg text { font: 12px system-ui, sans-serif; fill: #1d2127; }
</style>
</head>
<body>
<h1>dsk profile: <span id="title-stage"></span></h1>
<p class="muted" id="subtitle"></p>
<section id="verdict"><h2>Verdict</h2><div class="verdict" id="verdict-box"></div></section>
<section id="throughput"><h2>Throughput and utilization</h2><div class="grid" id="throughput-cards"></div>
<p class="muted" id="peak-method"></p></section>
<section id="phases"><h2>Time by phase (measured steps)</h2><div id="phases-chart"></div>
<table id="phases-table"></table></section>
<section id="ops"><h2>Top operators by self time</h2><p class="muted" id="ops-note"></p><table id="ops-table"></table>
<h3>By operator name (all shapes)</h3><table id="ops-by-name-table"></table></section>
<section id="memory"><h2>Memory over time</h2><div class="grid" id="memory-cards"></div><div id="memory-chart"></div></section>
<section id="machine"><h2>Machine</h2><table id="machine-table"></table></section>
<section id="config"><h2>Configuration</h2><pre id="config-text"></pre></section>
<script type="application/json" id="summary-data">)HTML";

const char* const kTail = R"HTML(</script>
<script>
"use strict";
(function () {
  var S = JSON.parse(document.getElementById("summary-data").textContent);

  function get(path) {
    var v = S;
    path.split(".").forEach(function (k) { v = (v === null || v === undefined) ? undefined : v[k]; });
    return v;
  }
  function fmtNum(x) {
    if (x === null || x === undefined || !isFinite(x)) return "n/a";
    if (Number.isInteger(x) && Math.abs(x) < 1e7) return String(x);
    return Number(x).toPrecision(4);
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  // An element showing the summary value at `path`: numbers × scale with a unit, words as they are.
  function val(tag, path, scale, unit) {
    var el = document.createElement(tag);
    var v = get(path);
    el.setAttribute("data-key", path);
    if (typeof v === "number" || v === null) {
      var s = scale === undefined ? 1 : scale;
      el.setAttribute("data-scale", String(s));
      el.textContent = fmtNum(v === null ? null : v * s) + (unit && v !== null ? unit : "");
    } else {
      el.textContent = v === undefined ? "" : String(v);
    }
    return el;
  }
  function cell(row, content, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (typeof content === "string") td.textContent = content; else td.appendChild(content);
    row.appendChild(td);
    return td;
  }
  function header(table, names, numeric) {
    var tr = document.createElement("tr");
    names.forEach(function (n, i) {
      var th = document.createElement("th");
      th.textContent = n;
      if (numeric && numeric[i]) th.className = "num";
      tr.appendChild(th);
    });
    table.appendChild(tr);
  }
  function card(box, label, path, scale, unit) {
    var c = document.createElement("div");
    c.className = "card";
    var l = document.createElement("div");
    l.className = "label";
    l.textContent = label;
    var v = val("div", path, scale, unit);
    v.className = "value";
    c.appendChild(l);
    c.appendChild(v);
    box.appendChild(c);
  }

  // Title and verdict
  document.getElementById("title-stage").appendChild(val("span", "stage"));
  var sub = document.getElementById("subtitle");
  sub.appendChild(document.createTextNode("warm-up steps: "));
  sub.appendChild(val("span", "steps.warmup"));
  sub.appendChild(document.createTextNode(", measured steps: "));
  sub.appendChild(val("span", "steps.measured"));
  sub.appendChild(document.createTextNode(", dsk "));
  sub.appendChild(val("span", "dsk_version"));

  var vb = document.getElementById("verdict-box");
  var bound = val("div", "verdict.bound");
  bound.className = "bound";
  vb.appendChild(bound);
  vb.appendChild(val("p", "verdict.reason"));
  var ul = document.createElement("ul");
  (S.verdict.advice || []).forEach(function (a, i) { ul.appendChild(val("li", "verdict.advice." + i)); });
  vb.appendChild(ul);

  // Throughput
  var tc = document.getElementById("throughput-cards");
  card(tc, "wall time of the measured steps", "wall_s", 1, " s");
  card(tc, "tokens / s", "tokens_per_s", 1, "");
  card(tc, "tokens per step", "tokens_per_step", 1, "");
  card(tc, "FLOP per token", "flops_per_token", 1, "");
  card(tc, "achieved FLOP/s", "flops_per_s", 1, "");
  card(tc, "peak FLOP/s", "peak_flops_per_s", 1, "");
  card(tc, "MFU", "mfu", 100, "%");
  card(tc, "mean step time", "step_mean_s", 1000, " ms");
  var pm = document.getElementById("peak-method");
  pm.appendChild(document.createTextNode("Peak: "));
  pm.appendChild(val("span", "peak_method"));
  pm.appendChild(document.createTextNode(". FLOPs: "));
  pm.appendChild(val("span", "flops_formula"));

  // Phases: a horizontal bar chart and a table
  var phases = S.phases || [];
  var colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];
  var W = 760, rowH = 24, left = 120, barW = W - left - 90;
  var maxS = Math.max.apply(null, phases.map(function (p) { return p.seconds; }).concat([1e-12]));
  var svg = '<svg id="phases-svg" width="' + W + '" height="' + (rowH * phases.length + 10) + '" role="img">';
  phases.forEach(function (p, i) {
    var y = 5 + i * rowH, w = Math.max(0, barW * p.seconds / maxS);
    svg += '<text x="0" y="' + (y + 15) + '">' + esc(p.name) + '</text>';
    svg += '<rect x="' + left + '" y="' + (y + 3) + '" width="' + w.toFixed(1) + '" height="' + (rowH - 8) +
           '" fill="' + colors[i % colors.length] + '"></rect>';
    svg += '<text x="' + (left + w + 6).toFixed(1) + '" y="' + (y + 15) + '">' + esc((100 * p.fraction).toFixed(1)) + '%</text>';
  });
  svg += '</svg>';
  document.getElementById("phases-chart").innerHTML = svg;
  var pt = document.getElementById("phases-table");
  header(pt, ["phase", "time", "share of wall time"], [false, true, true]);
  phases.forEach(function (p, i) {
    var tr = document.createElement("tr");
    cell(tr, val("span", "phases." + i + ".name"));
    cell(tr, val("span", "phases." + i + ".seconds", 1000, " ms"), "num");
    cell(tr, val("span", "phases." + i + ".fraction", 100, "%"), "num");
    pt.appendChild(tr);
  });
  var tr = document.createElement("tr");
  cell(tr, "sum of the named phases (all but other)");
  cell(tr, val("span", "named_phases_s", 1000, " ms"), "num");
  cell(tr, val("span", "named_phases_fraction", 100, "%"), "num");
  pt.appendChild(tr);

  // Operators
  var on = document.getElementById("ops-note");
  on.appendChild(val("span", "ops_total_calls"));
  on.appendChild(document.createTextNode(" operator calls in the measured steps, mean self time "));
  on.appendChild(val("span", "mean_op_us", 1, " µs"));
  on.appendChild(document.createTextNode("; matrix products take "));
  on.appendChild(val("span", "matmul_share", 100, "%"));
  on.appendChild(document.createTextNode(" of operator self time."));
  var ot = document.getElementById("ops-table");
  header(ot, ["operator", "input shapes", "device", "calls", "self", "self share", "total"],
         [false, false, false, true, true, true, true]);
  (S.top_ops || []).forEach(function (o, i) {
    var r = document.createElement("tr");
    var p = "top_ops." + i + ".";
    cell(r, val("span", p + "name"));
    cell(r, val("span", p + "shapes"), "shape");
    cell(r, val("span", p + "device"));
    cell(r, val("span", p + "calls"), "num");
    cell(r, val("span", p + "self_ms", 1, " ms"), "num");
    cell(r, val("span", p + "self_fraction", 100, "%"), "num");
    cell(r, val("span", p + "total_ms", 1, " ms"), "num");
    ot.appendChild(r);
  });
  var nt = document.getElementById("ops-by-name-table");
  header(nt, ["operator", "device", "matrix product", "calls", "self", "self share"],
         [false, false, false, true, true, true]);
  (S.ops_by_name || []).forEach(function (o, i) {
    var r = document.createElement("tr");
    var p = "ops_by_name." + i + ".";
    cell(r, val("span", p + "name"));
    cell(r, val("span", p + "device"));
    cell(r, val("span", p + "matmul"));
    cell(r, val("span", p + "calls"), "num");
    cell(r, val("span", p + "self_ms", 1, " ms"), "num");
    cell(r, val("span", p + "self_fraction", 100, "%"), "num");
    nt.appendChild(r);
  });

  // Memory: cards and a line chart of the samples [t_s, rss_mib, device_mib]
  var mc = document.getElementById("memory-cards");
  card(mc, "peak resident memory", "memory.peak_rss_mib", 1, " MiB");
  card(mc, "peak resident memory, measured steps", "memory.peak_rss_measured_mib", 1, " MiB");
  if (S.memory.peak_device_mib !== null && S.memory.peak_device_mib !== undefined)
    card(mc, "peak device memory (allocated)", "memory.peak_device_mib", 1, " MiB");
  var samples = S.memory.samples || [];
  if (samples.length > 0) {
    var MW = 760, MH = 240, ml = 60, mb = 30, mt = 10, mr = 30;
    var tMax = Math.max(samples[samples.length - 1][0], 1e-9);
    var yMax = 1e-9;
    samples.forEach(function (s) { yMax = Math.max(yMax, s[1], s[2] || 0); });
    var X = function (t) { return ml + (MW - ml - mr) * t / tMax; };
    var Y = function (m) { return mt + (MH - mt - mb) * (1 - m / yMax); };
    var m = '<svg id="memory-svg" width="' + MW + '" height="' + MH + '" role="img">';
    var w0 = S.memory.measured_start_s, w1 = S.memory.measured_end_s;
    if (w1 > w0)
      m += '<rect x="' + X(w0).toFixed(1) + '" y="' + mt + '" width="' + (X(w1) - X(w0)).toFixed(1) + '" height="' +
           (MH - mt - mb) + '" fill="#eef3f8"></rect><text x="' + (X(w0) + 4).toFixed(1) + '" y="' + (mt + 14) +
           '">measured steps</text>';
    m += '<line x1="' + ml + '" y1="' + (MH - mb) + '" x2="' + (MW - mr) + '" y2="' + (MH - mb) + '" stroke="#888"></line>';
    m += '<line x1="' + ml + '" y1="' + mt + '" x2="' + ml + '" y2="' + (MH - mb) + '" stroke="#888"></line>';
    for (var k = 0; k <= 4; ++k) {
      var yv = yMax * k / 4;
      m += '<text x="4" y="' + (Y(yv) + 4).toFixed(1) + '">' + esc(yv.toFixed(0)) + ' MiB</text>';
      var tv = tMax * k / 4;
      m += '<text text-anchor="middle" x="' + X(tv).toFixed(1) + '" y="' + (MH - 10) + '">' + esc(tv.toFixed(2)) + ' s</text>';
    }
    var line = function (idx, color) {
      var pts = samples.filter(function (s) { return s[idx] !== null && s[idx] !== undefined && s[idx] >= 0; })
                       .map(function (s) { return X(s[0]).toFixed(1) + "," + Y(s[idx]).toFixed(1); });
      if (pts.length) m += '<polyline fill="none" stroke="' + color + '" stroke-width="1.5" points="' + pts.join(" ") + '"></polyline>';
    };
    line(1, "#4e79a7");
    line(2, "#e15759");
    m += '</svg>';
    document.getElementById("memory-chart").innerHTML = m;
  }

  // Machine and configuration
  var mt2 = document.getElementById("machine-table");
  Object.keys(S.machine || {}).forEach(function (k) {
    var r = document.createElement("tr");
    cell(r, k);
    cell(r, val("span", "machine." + k));
    mt2.appendChild(r);
  });
  document.getElementById("config-text").appendChild(val("span", "config_yaml"));

  document.body.setAttribute("data-rendered", "ok");
})();
</script>
</body>
</html>
)HTML";

}  // namespace

std::string render_report_html(const nlohmann::ordered_json& summary) {
  // '<' only occurs inside JSON strings, where \u003c means the same: the script element can
  // then never be closed (or commented) by the data.
  std::string data = summary.dump();
  std::string escaped;
  escaped.reserve(data.size());
  for (char c : data) {
    if (c == '<') escaped += "\\u003c";
    else escaped += c;
  }
  return std::string(kHead) + escaped + kTail;
}

}  // namespace dsk::profile
