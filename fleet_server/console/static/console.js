// edgeloop console: live regions, actions through the JSON API (with the login's CSRF token),
// small SVG charts, and the box editor of the review page. No build step, no dependencies.
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

function toast(text, bad) {
  const box = document.getElementById("toast");
  if (!box) return;
  const div = document.createElement("div");
  div.textContent = text;
  if (bad) div.className = "err";
  box.appendChild(div);
  setTimeout(() => div.remove(), bad ? 9000 : 4000);
}

async function api(method, url, body, isForm) {
  const opts = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    if (isForm) opts.body = body;
    else { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  }
  const resp = await fetch(url, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!resp.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    throw new Error(`${resp.status}: ${detail}`);
  }
  return data;
}

function then(spec, data) {
  if (!spec) return refreshAll().then(() => {});  // live regions show the result
  if (spec === "reload") { setTimeout(() => location.reload(), 300); return Promise.resolve(); }
  if (spec.startsWith("go:")) location.href = spec.slice(3).replace("{id}", data && data.id);
  if (spec.startsWith("credential:")) {  // a new device token: shown once, as the agent.yaml lines
    const el = document.querySelector(spec.slice(11));
    el.textContent = [
      "# agent.yaml (the token is shown once; keep it secret)",
      `device_id: ${data.device_id}`, `server_url: ${data.server_url}`, `mqtt_url: ${data.mqtt_url}`,
      `token: ${data.token}`, `root_public_key: ${data.root_public_key}`,
    ].join("\n");
    el.hidden = false;
  }
  return Promise.resolve();
}

// -- live regions: data-poll="URL" data-every="ms" -------------------------------------------------
const polls = [];
async function refresh(el) {
  if (el.dataset.busy) return;
  el.dataset.busy = "1";
  try {
    const resp = await fetch(el.dataset.poll, { credentials: "same-origin" });
    if (resp.redirected && resp.url.includes("/console/login")) { location.href = resp.url; return; }
    if (!resp.ok) return;
    let html = await resp.text();
    if (/<html/i.test(html)) {
      const other = new DOMParser().parseFromString(html, "text/html").getElementById(el.id);
      if (!other) return;
      html = other.innerHTML;
    }
    if (html !== el.dataset.last) {
      el.dataset.last = html;
      el.innerHTML = html;
      decorate(el);
    }
  } catch (e) { /* the server is restarting: the next tick tries again */ } finally { delete el.dataset.busy; }
}
function refreshAll() { return Promise.all(polls.map(refresh)); }
function startPolling() {
  document.querySelectorAll("[data-poll]").forEach((el) => {
    polls.push(el);
    const every = Number(el.dataset.every || 2000);
    if (every > 0) setInterval(() => { if (!document.hidden) refresh(el); }, every);
  });
}

// -- actions ----------------------------------------------------------------------------------------
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("[data-api]");
  if (!b) return;
  ev.preventDefault();
  if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
  const [method, url] = b.dataset.api.split(" ");
  b.disabled = true;
  try {
    const data = await api(method, url, b.dataset.body ? JSON.parse(b.dataset.body) : undefined);
    toast(`${b.textContent.trim()}: done`);
    await then(b.dataset.then, data);
  } catch (e) { toast(e.message, true); } finally { b.disabled = false; }
});

function formJson(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") { out[el.name] = el.checked; continue; }
    if (el.type === "select-multiple") { out[el.name] = [...el.selectedOptions].map((o) => o.value); continue; }
    let v = el.value.trim();
    if (v === "") continue;
    if (el.name === "ref") {
      const i = v.lastIndexOf(":");
      out.model = v.slice(0, i); out.version = Number(v.slice(i + 1));
      continue;
    }
    if (el.hasAttribute("data-list")) v = v.split(",").map((x) => x.trim()).filter(Boolean);
    else if (el.hasAttribute("data-kv")) {  // "site=berlin, camera=dock" -> {site: "berlin", camera: "dock"}
      v = Object.fromEntries(v.split(",").map((x) => x.split("=").map((y) => y.trim())).filter((kv) => kv.length === 2 && kv[0]));
    }
    else if (el.type === "number") v = Number(v);
    out[el.name] = v;
  }
  return out;
}

document.addEventListener("submit", async (ev) => {
  const form = ev.target.closest("[data-api-form]");
  if (!form) return;
  ev.preventDefault();
  // getAttribute, not form.dataset: a form control may be named like any form property
  const [method, template] = form.getAttribute("data-api-form").split(" ");
  const button = form.querySelector("button[type=submit], button:not([type])");
  const body = formJson(form);
  // a {field} in the URL takes that field's value out of the body
  const url = template.replace(/\{(\w+)\}/g, (_, k) => { const v = body[k]; delete body[k]; return encodeURIComponent(v ?? ""); });
  if (button) button.disabled = true;
  try {
    const data = await api(method, url, body);
    toast("saved");
    await then(form.getAttribute("data-then"), data);
  } catch (e) { toast(e.message, true); } finally { if (button) button.disabled = false; }
});

document.addEventListener("change", async (ev) => {
  const sel = ev.target.closest("[data-api-select]");
  if (sel) {
    const [method, url] = sel.dataset.apiSelect.split(" ");
    try { await api(method, url, { [sel.dataset.field]: sel.value }); toast(`${sel.dataset.field}: ${sel.value}`); }
    catch (e) { toast(e.message, true); }
    return;
  }
  const up = ev.target.closest("[data-api-upload] input[type=file]");
  if (up && up.files.length) {
    const [method, url] = up.form.getAttribute("data-api-upload").split(" ");
    try {
      const data = await api(method, url, up.files[0], true);
      toast(`imported: ${JSON.stringify(data)}`);
      setTimeout(() => location.reload(), 800);
    } catch (e) { toast(e.message, true); }
  }
});

// bulk review on the samples grid
document.addEventListener("click", async (ev) => {
  if (ev.target.id === "select-all") {
    const picks = [...document.querySelectorAll(".sample .pick")];
    const all = picks.every((p) => p.checked);
    picks.forEach((p) => { p.checked = !all; });
    return;
  }
  const b = ev.target.closest("[data-bulk]");
  if (!b) return;
  const ids = [...document.querySelectorAll(".sample .pick:checked")].map((p) => Number(p.value));
  if (!ids.length) { toast("select samples first", true); return; }
  if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
  try {
    const r = await api("POST", "/api/v1/samples/review", { ids, action: b.dataset.bulk });
    const bad = (r.failed || []).map((f) => `#${f.id}: ${f.reason}`).join("; ");
    toast(`${b.dataset.bulk}ed ${r.reviewed} sample(s)` + (bad ? `; not ${b.dataset.bulk}ed: ${bad}` : ""), !!bad);
    setTimeout(() => location.reload(), bad ? 6000 : 500);
  } catch (e) { toast(e.message, true); }
});

// -- charts -----------------------------------------------------------------------------------------
const NS = "http://www.w3.org/2000/svg";
function svgEl(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2); }

function clock(t, seconds) { const d = new Date(t * 1000); return d.toTimeString().slice(0, seconds ? 8 : 5); }
function span(s) { const m = Math.floor(s / 60); return m ? `${m}:${String(Math.round(s % 60)).padStart(2, "0")}` : `${Math.round(s)} s`; }

// ys against xs (unix times: a clock axis; seconds from a start: an elapsed axis; none: evenly spaced)
function drawChart(svg, ys, kind, xs, xkind) {
  svg.innerHTML = "";
  const W = svg.clientWidth || 300, H = svg.clientHeight || 140, L = 36, B = 16;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  if (!ys.length) { svgEl("text", { x: W / 2 - 30, y: H / 2 }, svg).textContent = "no data yet"; return; }
  const max = Math.max(...ys, 1e-9), min = kind === "bars" ? 0 : Math.min(0, ...ys);
  const y = (v) => H - B - ((v - min) / (max - min || 1)) * (H - B - 8);
  svgEl("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }, svg);
  svgEl("text", { x: 2, y: 10 }, svg).textContent = fmt(max);
  svgEl("text", { x: 2, y: H - B }, svg).textContent = fmt(min);
  if (kind === "bars") {
    const w = (W - L) / ys.length;
    ys.forEach((v, i) => {
      svgEl("rect", { class: "bar", x: L + i * w + 1, y: y(v), width: Math.max(1, w - 2), height: H - B - y(v) }, svg);
      svgEl("text", { x: L + i * w + 2, y: H - 2 }, svg).textContent = (i / ys.length).toFixed(1);
    });
    return;
  }
  const have = Array.isArray(xs) && xs.length === ys.length && ys.length > 1;
  const x0 = have ? xs[0] : 0, x1 = have ? xs[xs.length - 1] : ys.length - 1;
  const x = (i) => L + (((have ? xs[i] : i) - x0) / (x1 - x0 || 1)) * (W - L - 4);
  const pts = ys.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svgEl("polyline", { points: pts }, svg);
  if (ys.length === 1) svgEl("circle", { cx: x(0), cy: y(ys[0]), r: 3 }, svg);
  svgEl("text", { x: W - 60, y: 10 }, svg).textContent = `now ${fmt(ys[ys.length - 1])}`;
  if (have) {  // the x axis: three ticks, as clock times or as time since the start
    const label = xkind === "clock" ? (v) => clock(v, x1 - x0 < 600) : (v) => span(v);
    for (const f of [0, 0.5, 1]) {
      const v = x0 + f * (x1 - x0), px = L + f * (W - L - 4);
      svgEl("line", { x1: px, y1: H - B, x2: px, y2: H - B + 3, class: "axis" }, svg);
      svgEl("text", { x: Math.min(px - 12, W - 34), y: H - 2, class: "tick" }, svg).textContent = label(v);
    }
  }
}

const seriesCache = {};
async function charts(root) {
  for (const svg of root.querySelectorAll("svg[data-values]")) {
    drawChart(svg, JSON.parse(svg.dataset.values), svg.dataset.kind, svg.dataset.x && JSON.parse(svg.dataset.x), "elapsed");
  }
  const wanted = [...root.querySelectorAll("svg[data-chart]")];
  for (const url of new Set(wanted.map((s) => s.dataset.chart))) {
    try { seriesCache[url] = await (await fetch(url, { credentials: "same-origin" })).json(); } catch (e) { continue; }
  }
  for (const svg of wanted) {
    const data = seriesCache[svg.dataset.chart];
    if (data) drawChart(svg, data[svg.dataset.key] || [], svg.dataset.kind, data.t, "clock");
  }
}

// one colour per class name, the same on every page (a hash of the name picks the hue)
function classColor(label) {
  let h = 0;
  for (const ch of String(label)) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 80%, 60%)`;
}

// boxes drawn over thumbnails, each in its class's colour with its name
function thumbBoxes(root) {
  for (const wrap of root.querySelectorAll(".boxed[data-boxes]")) {
    if (wrap.querySelector("svg")) continue;
    const W = Number(wrap.dataset.w), H = Number(wrap.dataset.h);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" }, wrap);
    for (const b of JSON.parse(wrap.dataset.boxes || "[]")) {
      if (!b.box) continue;
      const [x1, y1, x2, y2] = b.box, c = classColor(b.label);
      svgEl("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, style: `stroke: ${c}`, "data-label": b.label }, svg);
      svgEl("text", { x: x1 + 2, y: Math.max(H / 12, y1 - 2), style: `fill: ${c}; font-size: ${Math.max(W, H) / 18}px` }, svg).textContent = b.label;
    }
  }
}

function decorate(root) { charts(root); thumbBoxes(root); }

// -- the review editor --------------------------------------------------------------------------------
function editor() {
  const ed = document.getElementById("editor");
  if (!ed) return;
  const svg = ed.querySelector("svg.overlay");
  const W = Number(ed.dataset.w), H = Number(ed.dataset.h), editable = ed.dataset.editable === "true";
  const classes = JSON.parse((document.getElementById("classes") || {}).textContent || "[]");
  const labelSel = document.getElementById("box-label");
  const list = document.getElementById("box-list");
  let boxes = JSON.parse(ed.dataset.boxes || "[]").filter((b) => b.box).map((b) => ({ label: b.label, box: b.box.slice(), score: b.score }));
  let sel = boxes.length ? 0 : -1, drag = null;

  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  function toImage(ev) {
    const r = svg.getBoundingClientRect();
    return [clamp(((ev.clientX - r.left) / r.width) * W, 0, W), clamp(((ev.clientY - r.top) / r.height) * H, 0, H)];
  }
  function render() {
    svg.innerHTML = "";
    const hs = Math.max(W, H) / 60;
    boxes.forEach((b, i) => {
      const [x1, y1, x2, y2] = b.box;
      const c = classColor(b.label);
      svgEl("rect", { class: "box" + (i === sel ? " sel" : ""), x: x1, y: y1, width: x2 - x1, height: y2 - y1, "data-i": i, "data-label": b.label, style: `stroke: ${c}` }, svg);
      svgEl("text", { x: x1 + 2, y: Math.max(14, y1 - 3), style: `fill: ${c}` }, svg).textContent = b.label + (b.score !== undefined ? ` ${b.score.toFixed(2)}` : "");
      if (i === sel && editable) svgEl("rect", { class: "handle", x: x2 - hs / 2, y: y2 - hs / 2, width: hs, height: hs, "data-i": i, "data-h": "1" }, svg);
    });
    list.innerHTML = "";
    boxes.forEach((b, i) => {
      const li = document.createElement("li");
      li.textContent = `${b.label} [${b.box.map((v) => Math.round(v)).join(", ")}]`;
      li.style.borderLeft = `4px solid ${classColor(b.label)}`;
      if (i === sel) li.className = "sel";
      li.onclick = () => { sel = i; syncLabel(); render(); };
      list.appendChild(li);
    });
    if (!boxes.length) list.innerHTML = "<li class='muted'>no boxes</li>";
  }
  function syncLabel() { if (labelSel && sel >= 0 && classes.includes(boxes[sel].label)) labelSel.value = boxes[sel].label; }

  if (editable) {
    svg.addEventListener("pointerdown", (ev) => {
      const [x, y] = toImage(ev);
      const t = ev.target;
      if (t.dataset && t.dataset.i !== undefined) {
        sel = Number(t.dataset.i);
        drag = { mode: t.dataset.h ? "resize" : "move", start: [x, y], orig: boxes[sel].box.slice() };
      } else {
        // a new box takes the class picked last (a newly drawn box, not the selected one's)
        boxes.push({ label: (labelSel && labelSel.value) || classes[0] || "object", box: [x, y, x + 1, y + 1] });
        sel = boxes.length - 1;
        drag = { mode: "draw", start: [x, y], orig: null };
      }
      svg.setPointerCapture(ev.pointerId);
      syncLabel(); render();
    });
    svg.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const [x, y] = toImage(ev), b = boxes[sel];
      if (drag.mode === "move") {
        const [ox1, oy1, ox2, oy2] = drag.orig, dx = clamp(x - drag.start[0], -ox1, W - ox2), dy = clamp(y - drag.start[1], -oy1, H - oy2);
        b.box = [ox1 + dx, oy1 + dy, ox2 + dx, oy2 + dy];
      } else if (drag.mode === "resize") {
        b.box = [drag.orig[0], drag.orig[1], Math.max(drag.orig[0] + 2, x), Math.max(drag.orig[1] + 2, y)];
      } else {
        const [sx, sy] = drag.start;
        b.box = [Math.min(sx, x), Math.min(sy, y), Math.max(sx, x), Math.max(sy, y)];
      }
      delete b.score;
      render();
    });
    svg.addEventListener("pointerup", () => {
      if (drag && drag.mode === "draw") {
        const [x1, y1, x2, y2] = boxes[sel].box;
        if (x2 - x1 < 3 || y2 - y1 < 3) { boxes.splice(sel, 1); sel = boxes.length - 1; }
      }
      drag = null; render();
    });
    if (labelSel) labelSel.addEventListener("change", () => { if (sel >= 0) { boxes[sel].label = labelSel.value; render(); } });
  }

  async function review(action) {
    const body = { action };
    if (action === "correct") {
      body.labels = boxes.map((b) => ({ label: b.label, box: b.box.map((v, k) => Math.round(clamp(v, 0, k % 2 ? H : W) * 10) / 10) }));
    }
    try {
      const r = await api("POST", `/api/v1/samples/${ed.dataset.id}/review`, body);
      const st = document.getElementById("sample-state");
      if (st) { st.textContent = r.state; st.className = `pill st-${r.state}`; }
      toast(`sample ${ed.dataset.id}: ${r.state}`);
      return true;
    } catch (e) { toast(e.message, true); return false; }
  }
  const bind = (id, fn) => { const b = document.getElementById(id); if (b) b.onclick = fn; };
  bind("accept", () => review("accept"));
  bind("save", () => review("correct"));
  bind("reject", () => review("reject"));
  document.addEventListener("keydown", (ev) => {
    if (!editable || ev.target.closest("input, select, textarea")) return;
    const k = ev.key.toLowerCase();
    if (k === "a") review("accept");
    else if (k === "s") { ev.preventDefault(); review("correct"); }
    else if (k === "r") review("reject");
    else if (k === "n") location.href = ed.dataset.next;
    else if ((k === "delete" || k === "backspace") && sel >= 0) { boxes.splice(sel, 1); sel = boxes.length - 1; render(); }
    else if (/^[1-9]$/.test(k) && sel >= 0 && classes[Number(k) - 1]) { boxes[sel].label = classes[Number(k) - 1]; syncLabel(); render(); }
  });
  syncLabel();  // the class selector shows the selected box's class from the start
  render();
}

// as you type a selector: how many devices it picks, from the server
let previewTimer = null;
document.addEventListener("input", (ev) => {
  const el = ev.target.closest("[data-preview]");
  if (!el) return;
  const out = document.querySelector(el.dataset.previewOut);
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    if (!el.value.trim()) { out.textContent = ""; return; }
    try {
      const p = await api("GET", el.dataset.preview + encodeURIComponent(el.value.trim()));
      out.textContent = `matches ${p.devices} device${p.devices === 1 ? "" : "s"} (${p.online} online)` +
        (p.first.length ? `: ${p.first.join(", ")}${p.devices > p.first.length ? ", …" : ""}` : "");
      out.className = p.devices ? "muted small" : "error small";
    } catch (e) { out.textContent = e.message; out.className = "error small"; }
  }, 250);
});

document.addEventListener("DOMContentLoaded", () => {
  startPolling();
  decorate(document);
  editor();
});
