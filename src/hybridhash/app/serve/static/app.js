// The search page: pick, drop or paste an image; POST it to /search; show the nearest items.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), fileInput = $("file"), preview = $("preview"), dropText = $("drop-text");
  const kSelect = $("k"), statusLine = $("status"), errorBox = $("error");
  const grid = $("grid"), resultsHead = $("results-head"), took = $("took"), empty = $("empty");
  const queryInfo = $("query-info"), collectionLine = $("collection");

  let limits = { max_k: 100, max_upload_bytes: Infinity, max_pixels: Infinity };
  let bits = 0;
  let current = null;   // the File being searched
  let previewUrl = null;
  let pending = null;   // AbortController of the request in flight

  const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
  const megabytes = (n) => `${(n / 1048576).toFixed(n < 1048576 ? 2 : 0)} MB`;

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    statusLine.textContent = "";
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  // the collection line; read again after each search and when the tab is shown again, since
  // the service follows updates of its collection (a new generation, another count)
  async function loadHealth(first) {
    try {
      const r = await fetch("/health", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const h = await r.json();
      limits = h.limits;
      bits = h.bits;
      const parts = [plural(h.count, "image"), `${h.bits}-bit codes`];
      if (h.model) parts.push(h.model);
      if (h.index) parts.push(`${h.index} index`);
      const gen = h.generation ? h.generation.number : 0;
      if (gen > 0) parts.push(`generation ${gen}`);
      collectionLine.textContent = parts.join(" · ");
      collectionLine.dataset.count = h.count;
      collectionLine.dataset.bits = h.bits;
      collectionLine.dataset.generation = gen;
      if (!first) return;
      for (const opt of [...kSelect.options]) {
        if (Number(opt.value) > limits.max_k) opt.remove();
      }
      if (!kSelect.value && kSelect.options.length) kSelect.selectedIndex = kSelect.options.length - 1;
    } catch (err) {
      if (!first) return;  // a search reports its own failure
      collectionLine.textContent = "the service does not answer";
      showError(`Cannot reach the search service (${err.message}).`);
    }
  }

  function setPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.onload = () => {
      preview.classList.toggle("pixelated", preview.naturalWidth < 100);
      preview.hidden = false;
      dropText.hidden = true;
      drop.classList.add("has-image");
    };
    preview.onerror = () => { preview.hidden = true; dropText.hidden = false; drop.classList.remove("has-image"); };
    preview.src = previewUrl;
  }

  function useFile(file) {
    if (!file) return;
    current = file;
    setPreview(file);
    search();
  }

  async function search() {
    if (!current) return;
    clearError();
    if (current.size > limits.max_upload_bytes) {
      showError(`${current.name} is ${megabytes(current.size)}; the limit is ${megabytes(limits.max_upload_bytes)}.`);
      return;
    }
    if (pending) pending.abort();
    pending = new AbortController();
    const body = new FormData();
    body.append("image", current, current.name || "upload");
    body.append("k", kSelect.value);
    statusLine.textContent = "Searching…";
    document.body.classList.add("busy");
    try {
      const r = await fetch("/search", { method: "POST", body, signal: pending.signal });
      let data = null;
      try { data = await r.json(); } catch (_) { /* not JSON: reported below */ }
      if (!r.ok) {
        const reason = data && typeof data.detail === "string" ? data.detail : `HTTP ${r.status}`;
        showError(`This upload was refused: ${reason}`);
        render(null);
        queryInfo.hidden = true;
        return;
      }
      statusLine.textContent = "";
      queryInfo.textContent = `${current.name || "query"} · ${data.query.width} × ${data.query.height} px`;
      queryInfo.hidden = false;
      render(data);
    } catch (err) {
      if (err.name !== "AbortError") showError(`The search failed: ${err.message}`);
    } finally {
      document.body.classList.remove("busy");
    }
    loadHealth(false);
  }

  function tile(hit) {
    const li = document.createElement("li");
    li.className = "tile";
    li.dataset.id = hit.id;
    li.dataset.distance = hit.distance;
    const a = document.createElement("a");
    a.href = hit.url;
    a.target = "_blank";
    a.rel = "noopener";
    a.title = hit.path;
    const frame = document.createElement("div");
    frame.className = "thumb";
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.path;
    img.loading = "lazy";
    img.decoding = "async";
    // tiny images (32 px datasets) look better as crisp pixels than blurred
    img.onload = () => { if (img.naturalWidth < 100) img.classList.add("pixelated"); };
    frame.append(img);
    const meta = document.createElement("div");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const dist = document.createElement("span");
    dist.className = "distance";
    dist.textContent = `distance ${hit.distance}`;
    dist.title = bits ? `${hit.distance} of ${bits} bits differ` : "";
    meta.append(rank, dist);
    const bar = document.createElement("div");
    bar.className = "closeness";
    const fill = document.createElement("span");
    fill.style.width = bits ? `${Math.max(0, 100 * (1 - hit.distance / bits))}%` : "0";
    bar.append(fill);
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = hit.label ?? "";
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path;
    a.append(frame, meta, bar, label, path);
    li.append(a);
    return li;
  }

  function render(data) {
    grid.replaceChildren();
    if (!data) {
      resultsHead.hidden = true;
      empty.hidden = false;
      return;
    }
    empty.hidden = data.results.length > 0;
    if (!data.results.length) empty.textContent = "The collection is empty.";
    resultsHead.hidden = false;
    took.textContent = `${plural(data.results.length, "result")} · ${data.took_ms.toFixed(1)} ms`;
    grid.append(...data.results.map(tile));
  }

  // --- wiring
  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
  kSelect.addEventListener("change", search);
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "dragend"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) useFile(file);
  });
  // a file dropped beside the zone must not replace the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  window.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.kind === "file");
    if (item) useFile(item.getAsFile());
  });

  document.addEventListener("visibilitychange", () => { if (!document.hidden) loadHealth(false); });

  loadHealth(true);
})();
