// The quality scores (raypipe/quality.py; a row carries them under their column names, null
// without a video): a histogram per score, a range filter per score (`<score>=lo..hi` in the
// #hash, either end may be left open: `motion_score=..0.1` is motion_score <= 0.1; a row without
// the score does not pass a range on it), and each gallery card's scores, added to the cards the
// gallery drew (this section renders after it). Clicking a histogram bar filters to its range.
(() => {
  const SCORES = [
    ["black_fraction", "black", "fraction of frames black or blank (0..1)"],
    ["frozen_fraction", "frozen", "fraction of frames unchanged from the previous one (0..1)"],
    ["motion_score", "motion", "mean optical-flow magnitude, pixels per frame"],
    ["flicker", "flicker", "mean absolute change between frames, levels of 255"],
    ["sharpness", "sharpness", "variance of the Laplacian, squared levels"],
    ["clip_score", "clip", "CLIP text-frame similarity x 100 (0..100)"],
  ];
  const BINS = 20;
  const ranges = {}; // score -> [lo, hi], null for an open end
  const byId = new Map(ROWS.map((r) => [r.id, r]));

  const fmt = (v) => {
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 0.01 || v === 0 ? v.toFixed(2) : v.toPrecision(2);
  };
  const number = (text) => {
    const v = parseFloat(text);
    return Number.isFinite(v) ? v : null;
  };
  const active = (name) => ranges[name] && (ranges[name][0] != null || ranges[name][1] != null);

  // Fixed axes: each score's bins span its values over every row, filtered or not.
  const axes = {};
  for (const [name] of SCORES) {
    const values = ROWS.map((r) => r[name]).filter((v) => v != null);
    if (!values.length) continue;
    const lo = values.reduce((a, b) => Math.min(a, b));
    const hi = values.reduce((a, b) => Math.max(a, b));
    const width = hi > lo ? (hi - lo) / BINS : 1;
    axes[name] = { lo, hi, width, all: counts(values, lo, width) };
  }

  function counts(values, lo, width) {
    const bins = new Array(BINS).fill(0);
    for (const v of values) bins[Math.min(BINS - 1, Math.max(0, Math.floor((v - lo) / width)))]++;
    return bins;
  }

  // The controls: a block per score (its range inputs and its histogram), built once.
  const inputs = {};
  const hists = {};
  const root = $("quality");
  for (const [name, , unit] of SCORES) {
    const min = el("input", { type: "number", step: "any", id: "qmin-" + name, placeholder: "min" });
    const max = el("input", { type: "number", step: "any", id: "qmax-" + name, placeholder: "max" });
    for (const input of [min, max]) {
      input.addEventListener("change", () => {
        ranges[name] = [number(min.value), number(max.value)];
        filterChanged();
      });
    }
    inputs[name] = [min, max];
    hists[name] = el("div", { class: "hist", id: "hist-" + name });
    const axis = axes[name];
    root.append(
      el(
        "div",
        { class: "score-block", "data-score": name },
        el("div", { class: "score-name", title: unit, text: name + " (" + unit + ")" }),
        el("div", { class: "score-range" }, min, el("span", { text: " .. " }), max),
        hists[name],
        el("div", { class: "score-axis", text: axis ? fmt(axis.lo) + " … " + fmt(axis.hi) : "no values" }),
      ),
    );
  }

  function drawHistogram(name, rows) {
    const node = hists[name];
    const axis = axes[name];
    if (!axis) {
      node.replaceChildren(el("div", { class: "empty", text: "no row has this score" }));
      return;
    }
    const shown = counts(rows.map((r) => r[name]).filter((v) => v != null), axis.lo, axis.width);
    const top = Math.max(1, ...axis.all);
    node.replaceChildren(
      ...axis.all.map((all, i) => {
        const lo = axis.lo + i * axis.width;
        const hi = i === BINS - 1 ? axis.hi : lo + axis.width;
        const bin = el(
          "div",
          { class: "bin", "data-count": String(shown[i]), title: fmt(lo) + " – " + fmt(hi) + ": " + shown[i] + " of " + all },
          el("div", { class: "all", style: "height:" + (100 * all) / top + "%" }),
          el("div", { class: "shown", style: "height:" + (100 * shown[i]) / top + "%" }),
        );
        bin.addEventListener("click", () => {
          ranges[name] = [lo, hi];
          inputs[name][0].value = String(lo);
          inputs[name][1].value = String(hi);
          filterChanged();
        });
        return bin;
      }),
    );
  }

  function cardScores(r) {
    const parts = SCORES.filter(([name]) => r[name] != null).map(([name, label]) => label + " " + fmt(r[name]));
    return el("div", { class: "scores", title: SCORES.map(([n, , u]) => n + ": " + u).join("\n"), text: parts.join(" · ") });
  }

  addSection({
    render(rows) {
      for (const [name] of SCORES) drawHistogram(name, rows);
      for (const card of document.querySelectorAll("#gallery .card")) {
        const r = byId.get(card.dataset.id);
        const body = card.querySelector(".body");
        if (r && body && !body.querySelector(".scores")) body.append(cardScores(r));
      }
      const on = SCORES.filter(([name]) => active(name)).length;
      $("quality-count").textContent = on ? "(" + on + " range" + (on > 1 ? "s" : "") + " set)" : "";
    },
    matches(r) {
      for (const [name] of SCORES) {
        if (!active(name)) continue;
        const [lo, hi] = ranges[name];
        const v = r[name];
        if (v == null || (lo != null && v < lo) || (hi != null && v > hi)) return false;
      }
      return true;
    },
    readHash(params) {
      for (const [name] of SCORES) {
        const [lo, hi] = (params.get(name) || "").split("..");
        ranges[name] = [number(lo), number(hi)];
        inputs[name][0].value = ranges[name][0] == null ? "" : String(ranges[name][0]);
        inputs[name][1].value = ranges[name][1] == null ? "" : String(ranges[name][1]);
      }
    },
    writeHash(params) {
      for (const [name] of SCORES) {
        if (!active(name)) continue;
        const [lo, hi] = ranges[name];
        params.set(name, (lo == null ? "" : lo) + ".." + (hi == null ? "" : hi));
      }
    },
  });
})();
