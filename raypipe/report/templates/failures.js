// The failed and rejected rows: a table row each (id, kind, status, error with its traceback,
// where in the manifest, prompt), a page (CONFIG.failuresPerPage) at a time.
(() => {
  let page = 0;

  function failureRow(r) {
    const error = el("td", { class: "error" }, r.error);
    if (r.traceback) {
      error.append(el("details", {}, el("summary", { text: "traceback" }), el("pre", { text: r.traceback })));
    }
    return el(
      "tr",
      { id: "failure-" + r.id, "data-id": r.id },
      el("td", { class: "id", text: r.id }),
      el("td", { text: r.kind }),
      el("td", { class: "status-" + r.status, text: r.status }),
      error,
      el("td", { text: r.where }),
      el("td", { class: "prompt", text: r.prompt }),
    );
  }

  addSection({
    render(rows) {
      const failures = rows.filter((r) => r.status !== "ok");
      const per = CONFIG.failuresPerPage;
      const pages = Math.max(1, Math.ceil(failures.length / per));
      page = Math.min(page, pages - 1);
      const tbody = document.querySelector("#failures tbody");
      tbody.replaceChildren(...failures.slice(page * per, (page + 1) * per).map(failureRow));
      if (!failures.length) {
        tbody.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "empty", text: "none" })));
      }
      pager($("failures-pager"), page, pages, failures.length, (p) => {
        page = p;
        render();
      });
      $("failures-count").textContent = "(" + failures.length + ")";
    },
    reset() {
      page = 0;
    },
  });
})();
