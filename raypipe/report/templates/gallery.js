// The gallery: a card per ok video, a page (CONFIG.cardsPerPage) at a time. A card shows the
// embedded poster, plays its video (muted, looped) on hover, and opens it larger with all its
// fields on click (#modal). Its page is `page=` in the #hash.
(() => {
  let page = 0;

  function settings(r) {
    const parts = [];
    if (r.mode) parts.push(r.mode);
    if (r.num_frames != null) parts.push(r.num_frames + " × " + r.height + "×" + r.width + " @ " + r.fps + " fps");
    if (r.duration_s != null) parts.push(r.duration_s.toFixed(2) + " s");
    if (r.steps != null) parts.push(r.steps + " steps");
    if (r.guidance != null) parts.push("cfg " + r.guidance);
    if (r.seed != null) parts.push("seed " + r.seed);
    if (r.sp_degree != null && r.sp_degree > 1) parts.push("sp " + r.sp_degree);
    if (r.gen_seconds != null) parts.push("gen " + r.gen_seconds.toFixed(1) + " s");
    return parts.join(" · ");
  }

  function posterNode(r) {
    if (r.poster) return el("img", { src: r.poster, alt: r.id, loading: "lazy" });
    return el("div", { class: "noposter", text: r.poster_error || "no poster" });
  }

  function card(r) {
    const media = el("div", { class: "media" }, posterNode(r));
    const node = el(
      "div",
      { class: "card", id: "card-" + r.id, "data-id": r.id, "data-video": r.video },
      media,
      el(
        "div",
        { class: "body" },
        el("div", { class: "id", text: r.id }),
        el("div", { class: "kind", text: r.kind + (r.model ? " · " + r.model : "") }),
        el("div", { class: "prompt", text: r.prompt, title: r.prompt }),
        el("div", { class: "settings", text: settings(r) }),
        r.playable ? null : el("div", { class: "uri", text: r.video }),
      ),
    );
    if (r.playable) {
      // Hover plays a muted loop in place of the poster; leaving puts the poster back.
      node.addEventListener("mouseenter", () => {
        const v = el("video", { src: r.video, muted: "", loop: "", autoplay: "", playsinline: "" });
        if (r.poster) v.setAttribute("poster", r.poster);
        v.muted = true;
        media.replaceChildren(v);
        v.play().catch(() => {});
      });
      node.addEventListener("mouseleave", () => media.replaceChildren(posterNode(r)));
    }
    node.addEventListener("click", () => openModal(r));
    return node;
  }

  function openModal(r) {
    const panel = document.querySelector("#modal .panel");
    const media = r.playable
      ? el("video", { src: r.video, controls: "", autoplay: "", loop: "", playsinline: "" })
      : posterNode(r);
    if (r.playable && r.poster) media.setAttribute("poster", r.poster);
    const fields = [
      ["id", r.id],
      ["kind", r.kind],
      ["mode", r.mode],
      ["status", r.status],
      ["prompt", r.prompt],
      ["negative prompt", r.negative_prompt],
      ["settings", settings(r)],
      ["model", r.model],
      ["video", r.video],
      ["bytes", r.bytes],
      ["device", r.device],
      ["worker", r.worker],
      ["finished", r.finished_at],
      ["params", r.params],
      ["error", r.error],
    ];
    const shown = fields.filter(([, v]) => v !== "" && v != null);
    const fieldRow = ([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }));
    const table = el("table", {}, ...shown.map(fieldRow));
    panel.replaceChildren(media, table);
    $("modal").classList.add("open");
  }

  function closeModal() {
    $("modal").classList.remove("open");
    document.querySelector("#modal .panel").replaceChildren();
  }

  $("modal").addEventListener("click", (ev) => {
    if (ev.target === $("modal")) closeModal();
  });
  document.querySelector("#modal .close").addEventListener("click", closeModal);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") closeModal();
  });

  addSection({
    render(rows) {
      const videos = rows.filter((r) => r.status === "ok");
      const per = CONFIG.cardsPerPage;
      const pages = Math.max(1, Math.ceil(videos.length / per));
      page = Math.min(page, pages - 1);
      const gallery = $("gallery");
      gallery.replaceChildren(...videos.slice(page * per, (page + 1) * per).map(card));
      if (!videos.length) gallery.replaceChildren(el("div", { class: "empty", text: "no videos match" }));
      pager($("cards-pager"), page, pages, videos.length, (p) => {
        page = p;
        render();
      });
      $("videos-count").textContent = "(" + videos.length + ")";
    },
    reset() {
      page = 0;
    },
    readHash(params) {
      page = Math.max(0, (parseInt(params.get("page"), 10) || 1) - 1);
    },
    writeHash(params) {
      if (page) params.set("page", String(page + 1));
    },
  });
})();
