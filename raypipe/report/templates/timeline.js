// The pool actors over time (data: raypipe/report/timeline.py), per run: each pool's utilisation,
// a timeline per actor (its model load, then one bar per video from its start for its
// gen_seconds; a call of several rows is split into one bar each; idle time shows as a gap) and
// the videos finished per interval. Drawn once as SVG; the filter only dims the bars it hides.
(() => {
  const DATA = JSON.parse($("timeline-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 1000;
  const LABEL = 190; // px of the actor labels, left of the time axis
  const ROW = 22;
  const bars = []; // [rect, row id]

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) if (c != null) node.append(c);
    return node;
  }
  const pct = (x) => (x == null ? "-" : Math.round(x * 100) + "%");
  const secs = (x) => (x == null ? "-" : x < 120 ? x.toFixed(1) + " s" : (x / 60).toFixed(1) + " min");

  // A round step for about `count` ticks over `span` seconds.
  function step(span, count) {
    const raw = span / count;
    const base = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * base).find((s) => s >= raw) || raw;
  }

  function axis(scale, end, y, height) {
    const g = svg("g", { class: "axis" });
    const every = step(end, 8);
    for (let t = 0; t <= end + 1e-9; t += every) {
      const x = scale(t);
      g.append(svg("line", { x1: x, x2: x, y1: y, y2: y + height, class: "tick" }));
      g.append(svg("text", { x: x, y: y + height + 12, "text-anchor": "middle" }, t.toFixed(every < 1 ? 1 : 0) + " s"));
    }
    return g;
  }

  function utilisationTable(run) {
    const table = el("table", { class: "utilisation" });
    table.append(
      el(
        "tr",
        {},
        ...["pool", "actors", "generating", "since their models loaded", "busy"].map((h) => el("th", { text: h })),
      ),
    );
    for (const [name, pool] of Object.entries(run.pools)) {
      const meter = el("span", { class: "meter" }, el("span", { style: "width:" + pct(pool.busy_ratio || 0) }));
      table.append(
        el(
          "tr",
          { "data-pool": name, "data-busy-ratio": pool.busy_ratio == null ? "" : String(pool.busy_ratio) },
          el("td", { text: name }),
          el("td", { class: "num", text: String(pool.actors) }),
          el("td", { class: "num", text: secs(pool.busy_seconds) }),
          el("td", { class: "num", text: secs(pool.span_seconds) }),
          el("td", { class: "busy" }, meter, " " + pct(pool.busy_ratio)),
        ),
      );
    }
    return table;
  }

  function timeline(run) {
    const end = Math.max(run.end, ...run.actors.map((a) => a.loaded || 0), 1e-3);
    const scale = (t) => LABEL + (Math.max(0, t) / end) * (WIDTH - LABEL - 12);
    const height = run.actors.length * ROW;
    const chart = svg("svg", {
      class: "timeline",
      viewBox: "0 0 " + WIDTH + " " + (height + 20),
      width: "100%",
      role: "img",
      "aria-label": "timeline of the pool actors",
    });
    const rows = run.actors.map((a, i) => {
      const y = i * ROW;
      const g = svg("g", { class: "actor", "data-worker": a.worker, "data-pool": a.pool });
      g.append(
        svg("text", { x: 4, y: y + 15, class: "label" }, a.worker + " " + pct(a.ratio)),
        svg("rect", { x: LABEL, y: y + 3, width: WIDTH - LABEL - 12, height: ROW - 6, class: "lane" }),
      );
      if (a.created != null && a.loaded != null) {
        g.append(
          svg(
            "rect",
            { x: scale(a.created), y: y + 3, width: Math.max(1, scale(a.loaded) - scale(a.created)), height: ROW - 6, class: "load" },
            svg("title", {}, a.worker + ": started, loading the model (" + secs(a.loaded - a.created) + ")"),
          ),
        );
      }
      chart.append(g);
      return g;
    });
    for (const call of run.calls) {
      let t = call.s;
      call.d.forEach((seconds, j) => {
        const rect = svg(
          "rect",
          {
            x: scale(t),
            y: call.w * ROW + 5,
            width: Math.max(1, scale(t + seconds) - scale(t)),
            height: ROW - 10,
            class: "bar status-" + call.st[j],
            "data-id": call.ids[j],
            "data-start": String(t),
            "data-seconds": String(seconds),
          },
          svg("title", {}, call.ids[j] + ": " + call.st[j] + ", " + secs(seconds) + " generating"),
        );
        rows[call.w].append(rect);
        bars.push([rect, call.ids[j]]);
        t += seconds;
      });
    }
    chart.append(axis(scale, end, 0, height));
    return chart;
  }

  function throughput(run) {
    const end = Math.max(run.end, ...run.finished, 1e-3);
    const bins = 30;
    const width = end / bins;
    const counts = new Array(bins).fill(0);
    for (const f of run.finished) counts[Math.min(bins - 1, Math.floor(f / width))] += 1;
    const top = Math.max(1, ...counts);
    const height = 80;
    const scale = (t) => LABEL + (t / end) * (WIDTH - LABEL - 12);
    const chart = svg("svg", {
      class: "throughput",
      viewBox: "0 0 " + WIDTH + " " + (height + 20),
      width: "100%",
      role: "img",
      "aria-label": "videos finished over time",
    });
    chart.append(
      svg("text", { x: 4, y: 14, class: "label" }, "videos finished"),
      svg("text", { x: 4, y: 30, class: "label muted" }, "per " + secs(width) + " (max " + top + ")"),
    );
    counts.forEach((n, i) => {
      if (!n) return;
      const h = (n / top) * (height - 6);
      chart.append(
        svg(
          "rect",
          { x: scale(i * width), y: height - h, width: Math.max(1, scale(width) - scale(0) - 1), height: h, class: "bin", "data-videos": String(n) },
          svg("title", {}, n + " videos from " + (i * width).toFixed(1) + " s"),
        ),
      );
    });
    chart.append(axis(scale, end, 0, height));
    return chart;
  }

  const root = $("timeline");
  if (!DATA.runs.length) root.append(el("p", { class: "empty", text: "no generated rows to draw" }));
  for (const run of DATA.runs) {
    const when = new Date(run.t0 * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    root.append(
      el(
        "div",
        { class: "run", "data-run": run.run_id },
        el("h3", { text: (run.run_id ? "run " + run.run_id : "rows of no recorded run") + " (from " + when + ")" }),
        utilisationTable(run),
        timeline(run),
        throughput(run),
      ),
    );
  }

  addSection({
    render(rows) {
      const shown = new Set(rows.map((r) => r.id));
      for (const [rect, id] of bars) rect.classList.toggle("dim", !shown.has(id));
    },
  });
})();
