/* shipyard's charts over the vendored uPlot (see vendor/): every chart of the UI, the serving
   dashboard and the HTML report is a <figure class="sy-chart" data-spec="{json}"> drawn here.
   The spec (built in Python, shipyard/charts/__init__.py) holds each series' own points; a null
   y is a gap (the line breaks: nothing was measured there), while points another series has and
   this one lacks are bridged. Time charts on a page share their x range and their cursor.
   Event markers are thin lines with a tooltip, never stacked labels. */
(function () {
  "use strict";
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  var plots = {};

  function fmt(v, unit) {
    if (v == null || !isFinite(v)) return "–";
    var a = Math.abs(v), s;
    if (a === 0) s = "0";
    else if (a >= 1000) s = Math.round(v).toLocaleString();
    else if (a >= 10) s = v.toFixed(a >= 100 ? 0 : 1);
    else if (a >= 0.01) s = v.toPrecision(3).replace(/\.?0+$/, "");
    else s = v.toExponential(1);
    return s + (unit || "");
  }

  function clock(t, withDate) {
    var d = new Date(t * 1000);
    var hm = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
    return withDate ? d.toLocaleDateString() + " " + hm : hm;
  }

  /* aligned columns: x = every series' x values; a series' own null stays null (gap), a point it
     does not have is undefined (uPlot bridges it) */
  function align(spec) {
    var xs = {}, i, j;
    spec.series.forEach(function (s) { s.points.forEach(function (p) { xs[p[0]] = true; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    x.forEach(function (v, k) { index[v] = k; });
    var data = [x];
    spec.series.forEach(function (s) {
      var col = new Array(x.length);
      for (j = 0; j < s.points.length; j++) col[index[s.points[j][0]]] = s.points[j][1];
      data.push(col);
    });
    (spec.hlines || []).forEach(function (h) {
      var col = new Array(x.length);
      for (i = 0; i < x.length; i++) col[i] = h.y;
      data.push(col);
    });
    return data;
  }

  function tooltip(fig) {
    var tip = fig.querySelector(".sy-tip");
    if (!tip) {
      tip = document.createElement("div");
      tip.className = "sy-tip";
      tip.setAttribute("role", "tooltip");
      tip.hidden = true;
      fig.appendChild(tip);
    }
    return tip;
  }

  function markerPlugin(spec, fig) {
    var markers = spec.markers || [];
    if (typeof markers === "string") {  // the page's shared events block
      var block = document.getElementById(markers);
      markers = block ? JSON.parse(block.textContent) : [];
    }
    return {
      hooks: {
        draw: function (u) {
          if (!markers.length) return;
          var ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
          ctx.save();
          ctx.strokeStyle = "#777";
          ctx.fillStyle = "#777";
          ctx.setLineDash([3, 3]);
          ctx.lineWidth = 1;
          markers.forEach(function (m) {
            var cx = Math.round(u.valToPos(m.x, "x", true));
            if (cx < u.bbox.left || cx > u.bbox.left + u.bbox.width) return;
            ctx.beginPath();
            ctx.moveTo(cx, top);
            ctx.lineTo(cx, top + h);
            ctx.stroke();
            ctx.beginPath();  // a small flag at the top: hover it (or anywhere on the line) for the label
            ctx.moveTo(cx - 4, top);
            ctx.lineTo(cx + 4, top);
            ctx.lineTo(cx, top + 6);
            ctx.fill();
          });
          ctx.restore();
        },
        setCursor: function (u) {
          var tip = tooltip(fig), left = u.cursor.left;
          if (left == null || left < 0 || !markers.length) { tip.hidden = true; return; }
          var near = markers.filter(function (m) { return Math.abs(u.valToPos(m.x, "x") - left) <= 6; });
          if (!near.length) { tip.hidden = true; return; }
          tip.textContent = "";
          near.forEach(function (m) {
            var line = document.createElement("div");
            line.textContent = (spec.x === "time" ? clock(m.x, true) + " · " : "") + m.label;
            tip.appendChild(line);
          });
          tip.style.left = Math.min(left + u.over.offsetLeft + 10, fig.clientWidth - 220) + "px";
          tip.style.top = (u.over.offsetTop + 8) + "px";
          tip.hidden = false;
        }
      }
    };
  }

  function yScale(spec) {
    var y = spec.y || {};
    var sc = {auto: true};
    if (y.scale === "log") { sc.distr = 3; sc.log = 10; }
    else if (y.scale === "asinh") { sc.distr = 4; sc.asinh = 1; }
    if (y.min != null || y.max != null) {
      sc.range = function (u, lo, hi) {
        var a = y.min != null ? y.min : lo, b = y.max != null ? y.max : hi;
        if (y.max == null && y.min_span != null && b - a < y.min_span) b = a + y.min_span;
        if (b <= a) b = a + (Math.abs(a) * 0.1 || 1);
        return [a, b];
      };
    }
    return sc;
  }

  function build(fig) {
    var spec = JSON.parse(fig.getAttribute("data-spec"));
    var holder = fig.querySelector(".sy-plot");
    if (plots[spec.id]) { plots[spec.id].destroy(); delete plots[spec.id]; }
    holder.textContent = "";
    var n = 0;
    spec.series.forEach(function (s) { s.points.forEach(function (p) { if (p[1] != null) n++; }); });
    fig.setAttribute("data-points", String(n));
    if (!n) {
      var empty = document.createElement("p");
      empty.className = "sy-empty";
      empty.textContent = spec.empty || "no data yet";
      holder.appendChild(empty);
      return;
    }
    var y = spec.y || {}, unit = spec.unit || "";
    var series = [{label: spec.x === "time" ? "time" : (spec.x_label || "x"),
                   value: function (u, v) { return v == null ? "–" : spec.x === "time" ? clock(v, true) : fmt(v); }}];
    spec.series.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      series.push({
        label: s.label, stroke: color, width: 1.6, spanGaps: false, dash: s.dash ? [6, 4] : undefined,
        paths: s.step ? uPlot.paths.stepped({align: 1}) : undefined,
        points: {show: s.points.length <= 80, size: 4, fill: color},
        value: function (u, v) { return y.integer ? (v == null ? "–" : "v" + v) : fmt(v, unit); }
      });
    });
    (spec.hlines || []).forEach(function (h) {
      series.push({label: h.label, stroke: h.color || "#c62828", width: 1, dash: [4, 3], points: {show: false},
                   value: function () { return fmt(h.y, unit); }});
    });
    var axisY = {size: 60, values: function (u, vals) {
      return vals.map(function (v) { return y.integer ? (Number.isInteger(v) ? "v" + v : "") : fmt(v, unit); });
    }};
    if (y.integer) axisY.incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
    if (y.scale === "asinh") {  // log-like above 1: a few round ticks, none below the floor
      axisY.splits = function (u) {
        var lo = u.scales.y.min, hi = u.scales.y.max;
        return [0, 1, 2, 5, 10, 20, 50, 100, 200, 500].filter(function (v) {
          return v >= Math.max(lo, y.min != null ? y.min : -Infinity) && v <= hi;
        });
      };
    }
    var axisX = spec.x === "time" ? {} : {values: function (u, vals) { return vals.map(function (v) { return fmt(v); }); },
                                          incrs: spec.x_integer ? [1, 2, 5, 10, 20, 50, 100, 200, 500] : undefined};
    var xs = {time: spec.x === "time"};
    if (spec.range) { xs.auto = false; xs.range = function () { return spec.range; }; }
    var width = Math.max(320, Math.min(fig.clientWidth || 560, spec.width || 560) - 8);
    var opts = {
      width: width, height: spec.height || 220, title: undefined,
      series: series, axes: [axisX, axisY], scales: {x: xs, y: yScale(spec)},
      legend: {live: true},
      cursor: spec.x === "time" ? {sync: {key: "sy-time"}} : {},
      plugins: [markerPlugin(spec, fig)]
    };
    plots[spec.id] = new uPlot(opts, align(spec), holder);
  }

  function renderAll(root) {
    var figs = (root || document).querySelectorAll("figure.sy-chart[data-spec]");
    for (var i = 0; i < figs.length; i++) {
      try { build(figs[i]); } catch (e) {
        figs[i].setAttribute("data-error", String(e));
        if (window.console) console.error("chart " + figs[i].id + ": " + e);
      }
    }
  }

  window.ShipyardCharts = {
    renderAll: renderAll,
    plot: function (id) { return plots[id]; },
    points: function (id) { var f = document.getElementById(id); return f ? Number(f.getAttribute("data-points") || 0) : 0; }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { renderAll(); });
  else renderAll();
})();
