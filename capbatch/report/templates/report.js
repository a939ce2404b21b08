// capbatch report: filter, sort and page the rows embedded above.
// Row text is only ever shown with textContent, never parsed as HTML.
// One page of cards is in the DOM at a time, so 10,000 rows cost no more than 100.
"use strict";
(function () {
  const rows = JSON.parse(document.getElementById("report-rows").textContent);
  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const state = { search: "", status: "all", ood: false, truncated: false, repeated: false, reason: null, sort: "order", page: 0, size: 100 };
  let visible = [];

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function matches(row, needle) {
    if (state.status === "ok" && !row.ok) return false;
    if (state.status === "error" && row.ok) return false;
    if (state.ood && row.inDomain !== false) return false;
    if (state.truncated && row.truncated !== true) return false;
    if (state.repeated && row.repeated !== true) return false;
    if (state.reason !== null && row.reason !== state.reason) return false;
    if (!needle) return true;
    return ((row.caption || "") + "\n" + row.key).toLowerCase().includes(needle);
  }

  // Errors count as the worst score: "worst first" puts them on top, "best first" last.
  const scoreOf = (row) => (row.ok && typeof row.score === "number" ? row.score : -Infinity);
  const orders = {
    order: (a, b) => a.i - b.i,
    worst: (a, b) => scoreOf(a) - scoreOf(b) || a.i - b.i,
    best: (a, b) => scoreOf(b) - scoreOf(a) || a.i - b.i,
    key: (a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.i - b.i),
  };

  function update(resetPage) {
    const needle = state.search.trim().toLowerCase();
    visible = rows.filter((row) => matches(row, needle));
    visible.sort(orders[state.sort]);
    if (resetPage) state.page = 0;
    render();
  }

  function flags(row) {
    const out = [];
    if (!row.ok) out.push(el("span", "flag error", "error"));
    if (row.inDomain === false) out.push(el("span", "flag ood", "out of domain"));
    if (row.truncated === true) out.push(el("span", "flag truncated", "truncated"));
    if (row.repeated === true) out.push(el("span", "flag repeated", "repeated words"));
    return out;
  }

  function image(row) {
    if (row.img) {
      const img = el("img", "thumb");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = row.caption || row.key;
      img.src = row.img;
      return img;
    }
    return el("div", "noimg", row.ok ? "no thumbnail: " + (row.imgError || "no image") : row.error);
  }

  function card(row) {
    const node = el("article", row.ok ? "card" : "card error");
    node.tabIndex = 0;
    node.dataset.index = String(row.i);
    node.appendChild(image(row));
    node.appendChild(row.ok ? el("p", "caption", row.caption || "") : el("p", "reason-text", row.error));
    const meta = el("div", "meta");
    if (typeof row.score === "number") meta.appendChild(el("span", "score", "score " + row.score.toFixed(3)));
    if (row.width && row.height) meta.appendChild(el("span", "size", row.width + "\u00d7" + row.height));
    flags(row).forEach((flag) => meta.appendChild(flag));
    node.appendChild(meta);
    node.appendChild(el("div", "key", row.key));
    node.addEventListener("click", () => showDetail(row));
    node.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetail(row); });
    return node;
  }

  function render() {
    const pages = Math.max(1, Math.ceil(visible.length / state.size));
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    const start = state.page * state.size;
    const slice = visible.slice(start, start + state.size);
    const fragment = document.createDocumentFragment();
    slice.forEach((row) => fragment.appendChild(card(row)));
    grid.replaceChildren(fragment);
    $("shown").textContent = visible.length
      ? "showing " + (start + 1) + "\u2013" + (start + slice.length) + " of " + visible.length + " (" + rows.length + " rows)"
      : "no rows match";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  // --- detail dialog: the image, or its attention word by word -------------------------

  function panel(attention, step, scale) {
    const node = el("div", "panel");
    const row = Math.floor(step / attention.columns), column = step % attention.columns;
    node.style.backgroundImage = 'url("' + attention.src + '")';
    node.style.backgroundSize = attention.columns * attention.panel * scale + "px " +
      attention.rows * (attention.panel + attention.label) * scale + "px";
    node.style.backgroundPosition = -column * attention.panel * scale + "px " +
      -(row * (attention.panel + attention.label) + attention.label) * scale + "px";
    return node;
  }

  function showWords(row, view, words) {
    const attention = row.attention;
    const labels = (row.caption || "").split(/\s+/).filter(Boolean).concat(["<end>"]).slice(0, attention.steps);
    const scale = 320 / attention.panel;
    const buttons = labels.map((word, step) => {
      const button = el("button", "", word);
      button.type = "button";
      button.addEventListener("click", () => select(step));
      words.appendChild(button);
      return button;
    });
    function select(step) {
      view.replaceChildren(panel(attention, step, scale));
      buttons.forEach((button, index) => button.setAttribute("aria-pressed", String(index === step)));
    }
    select(0);
  }

  function field(table, name, value) {
    if (value === undefined || value === null || value === "") return;
    const tr = el("tr");
    tr.appendChild(el("th", "", name));
    tr.appendChild(el("td", "", value));
    table.appendChild(tr);
  }

  function showDetail(row) {
    const view = $("detail-view"), words = $("detail-words"), table = $("detail-fields");
    view.replaceChildren();
    words.replaceChildren();
    table.replaceChildren();
    if (row.attention && row.attention.src) showWords(row, view, words);
    else view.appendChild(image(row));
    field(table, "key", row.key);
    if (row.path !== row.key) field(table, "path", row.path);
    field(table, row.ok ? "caption" : "error", row.ok ? row.caption : row.error);
    if (typeof row.score === "number") field(table, "score", row.score.toFixed(6));
    if (row.width) field(table, "size", row.width + " \u00d7 " + row.height);
    if (row.inDomain !== undefined) field(table, "in domain", row.inDomain ? "yes" : "no");
    if (row.distance !== undefined) field(table, "domain distance", row.distance.toFixed(4));
    if (row.truncated !== undefined) field(table, "truncated", row.truncated ? "yes" : "no");
    if (row.repeated !== undefined) field(table, "repeated words", row.repeated ? "yes" : "no");
    field(table, "model", row.model);
    if (row.attention && row.attention.error) field(table, "attention", row.attention.error);
    Object.entries(row.extra || {}).forEach(([name, value]) => field(table, name, value));
    $("detail").showModal();
  }

  // --- controls -------------------------------------------------------------------------

  function bind(id, event, apply) {
    const node = $(id);
    if (node) node.addEventListener(event, () => { apply(node); update(true); });
  }
  bind("search", "input", (node) => { state.search = node.value; });
  bind("status", "change", (node) => { state.status = node.value; });
  bind("out-of-domain", "change", (node) => { state.ood = node.checked; });
  bind("truncated", "change", (node) => { state.truncated = node.checked; });
  bind("repeated", "change", (node) => { state.repeated = node.checked; });
  bind("sort", "change", (node) => { state.sort = node.value; });
  bind("page-size", "change", (node) => { state.size = Number(node.value); });
  document.querySelectorAll("button.reason").forEach((button) => {
    button.addEventListener("click", () => {
      state.reason = Number(button.dataset.reason);
      state.status = "error";
      $("status").value = "error";
      $("reason-text").textContent = button.textContent;
      $("reason-filter").hidden = false;
      update(true);
    });
  });
  $("reason-clear").addEventListener("click", () => {
    state.reason = null;
    $("reason-filter").hidden = true;
    update(true);
  });
  const turn = (delta) => { state.page += delta; render(); window.scrollTo(0, 0); };
  $("prev").addEventListener("click", () => turn(-1));
  $("next").addEventListener("click", () => turn(1));
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) $("detail").close(); });

  update(true);
  document.body.dataset.ready = "true";
})();
