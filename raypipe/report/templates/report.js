// The page's core, shared by its sections: the rows, the filter (kind, status, search; kept in the
// #hash so a view can be linked), helpers (el, pager) and the one render() every change calls.
// A section's script registers itself with addSection({...}):
//   render(rows)      draws the section from the rows that pass the filter (required);
//   matches(row)      its own filter, if it has one (a row is shown when every filter passes);
//   reset()           the filter changed (e.g. back to its first page);
//   readHash(params)  takes its state from the #hash (URLSearchParams);
//   writeHash(params) puts its state into the #hash.
const CONFIG = JSON.parse(document.getElementById("report-config").textContent);
const ROWS = JSON.parse(document.getElementById("report-rows").textContent);
for (const r of ROWS) r.haystack = (r.id + "\n" + r.prompt + "\n" + r.negative_prompt + "\n" + r.error).toLowerCase();
const state = { kind: "", status: "", q: "" };
const sections = [];
const addSection = (section) => sections.push(section);
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// First / prev / "page i of n" / next / last into `node`; nothing when everything fits on one page.
function pager(node, page, pages, total, onPage) {
  const button = (label, target, disabled) => {
    const b = el("button", { type: "button", text: label });
    b.disabled = disabled;
    b.addEventListener("click", () => onPage(target));
    return b;
  };
  node.replaceChildren();
  if (pages <= 1) return;
  node.append(
    button("« first", 0, page === 0),
    button("‹ prev", page - 1, page === 0),
    el("span", { class: "page-label", text: "page " + (page + 1) + " of " + pages + " (" + total + " rows)" }),
    button("next ›", page + 1, page >= pages - 1),
    button("last »", pages - 1, page >= pages - 1),
  );
}

function matches(r) {
  return (
    (!state.kind || r.kind === state.kind) &&
    (!state.status || r.status === state.status) &&
    (!state.q || r.haystack.includes(state.q)) &&
    sections.every((s) => !s.matches || s.matches(r))
  );
}

function render() {
  const rows = ROWS.filter(matches);
  for (const s of sections) s.render(rows);
  $("match-count").textContent = rows.length + " of " + ROWS.length + " rows match";
  writeHash();
}

function filterChanged() {
  for (const s of sections) if (s.reset) s.reset();
  render();
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.kind = p.get("kind") || "";
  state.status = p.get("status") || "";
  state.q = (p.get("q") || "").trim().toLowerCase();
  $("kind").value = state.kind;
  $("status").value = state.status;
  $("q").value = p.get("q") || "";
  for (const s of sections) if (s.readHash) s.readHash(p);
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.kind) p.set("kind", state.kind);
  if (state.status) p.set("status", state.status);
  if (state.q) p.set("q", state.q);
  for (const s of sections) if (s.writeHash) s.writeHash(p);
  const hash = p.toString();
  if (hash === location.hash.slice(1)) return;
  try {
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  } catch (e) {
    /* some file:// pages */
  }
}

let timer = 0;
$("q").addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(() => {
    state.q = $("q").value.trim().toLowerCase();
    filterChanged();
  }, 150);
});
$("kind").addEventListener("change", () => {
  state.kind = $("kind").value;
  filterChanged();
});
$("status").addEventListener("change", () => {
  state.status = $("status").value;
  filterChanged();
});
$("clear").addEventListener("click", () => {
  location.hash = "";
  readHash();
  render();
});
window.addEventListener("hashchange", () => {
  readHash();
  render();
});

// Called once, after every section's script has registered it.
function start() {
  readHash();
  render();
}
