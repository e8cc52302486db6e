// The masksmith label page: a queue of DATA's images and a mask editor on a canvas.
//
// The mask is a Uint8Array of class indices at the image's full size, painted through the class colors
// into an offscreen canvas; the view draws the image and that canvas with one transform (zoom, pan), so a
// brush stroke repaints only the rectangle it changed. Every edit keeps the rectangle's values before and
// after it, for undo and redo. Masks travel as zlib-deflated class indices (CompressionStream "deflate").
"use strict";

const $ = (id) => document.getElementById(id);

const page = {
  session: null,  // GET /api/session
  rows: [],       // the queue as last fetched, in its order
  filter: "",
  tool: "brush",
  cls: 1,
  size: 12,
  opacity: 0.55,
  visible: true,
  leaving: null,  // the id a navigation away from unsaved edits was refused for once
};

let doc = null;   // the open image: see openImage()
const view = { scale: 1, x: 0, y: 0 };
let lut = new Uint32Array(256);  // class index -> RGBA (little-endian), 0 = see-through
let editCounter = 0;

// --- small helpers --------------------------------------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error right" : "muted right";
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

async function inflate(buffer) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function deflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function fetchMask(url) {
  const response = await fetch(url);
  if (!response.ok) return { error: `${response.status} ${await errorText(response)}` };
  const width = Number(response.headers.get("X-Mask-Width"));
  const height = Number(response.headers.get("X-Mask-Height"));
  const values = await inflate(await response.arrayBuffer());
  return { values, width, height, version: response.headers.get("X-Mask-Version") };
}

function className(index) {
  const classes = page.session ? page.session.classes : [];
  if (index < classes.length) return classes[index].name;
  return page.session && page.session.ignore && index === page.session.ignore.index ? "ignore" : `value ${index}`;
}

// --- session, queue and legend ----------------------------------------------------------------------------

async function loadSession() {
  const response = await fetch("/api/session");
  if (!response.ok) { setStatus(`session: ${response.status} ${await errorText(response)}`, true); return; }
  page.session = await response.json();
  showSession();
}

function showSession() {
  const s = page.session;
  $("data-name").textContent = s.data;
  $("done").textContent = `${s.done} / ${s.images} done`;
  $("model-id").textContent = s.model ? s.model.id : "no model";
  const progress = s.progress;
  $("progress").textContent = progress && progress.done + progress.failed < progress.total
    ? `predicting ${progress.done + progress.failed} / ${progress.total}` : (progress ? "all predicted" : "");
  $("command").textContent = s.command;
  $("reload-note").textContent = `looks for ${s.next_model}`;
  const leftOut = $("left-out");
  leftOut.hidden = s.left_out_count === 0;
  leftOut.textContent = s.left_out_count ? `Left out (${s.left_out_count}): ${s.left_out.join("; ")}` : "";
  $("region-tool").hidden = !s.model;
}

function buildLut() {
  lut = new Uint32Array(256);
  const s = page.session;
  s.classes.forEach((c, index) => {
    if (index === 0) return; // background stays see-through, as on the serve page
    lut[index] = (255 << 24) | (c.color[2] << 16) | (c.color[1] << 8) | c.color[0];
  });
  if (s.ignore) lut[s.ignore.index] = (255 << 24) | (200 << 16) | (200 << 8) | 200;
}

function buildLegend() {
  const list = $("legend");
  list.replaceChildren();
  const entries = page.session.classes.map((c) => ({ index: c.index, name: c.name, color: c.color }));
  if (page.session.ignore) entries.push({ index: page.session.ignore.index, name: "ignore", color: [200, 200, 200] });
  for (const entry of entries) {
    const item = document.createElement("li");
    item.dataset.class = String(entry.index);
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = entry.index <= 9 ? String(entry.index) : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${entry.color.join(",")})`;
    const name = document.createElement("span");
    name.textContent = entry.name;
    item.append(key, swatch, name);
    item.addEventListener("click", () => pickClass(entry.index));
    list.append(item);
  }
  pickClass(page.session.classes.length > 1 ? 1 : 0);
}

function pickClass(index) {
  const known = page.session.classes.length > index || (page.session.ignore && page.session.ignore.index === index);
  if (!known) return;
  page.cls = index;
  for (const item of $("legend").children) item.classList.toggle("current", Number(item.dataset.class) === index);
  if (page.tool === "eraser") pickTool("brush");
}

async function loadQueue() {
  const response = await fetch(`/api/queue${page.filter ? `?state=${page.filter}` : ""}`);
  if (!response.ok) { setStatus(`queue: ${response.status} ${await errorText(response)}`, true); return; }
  page.rows = (await response.json()).images;
  showQueue();
}

const STATE_TEXT = { unlabelled: "no mask", predicted: "predicted", corrected: "corrected", drawn: "drawn",
  labelled: "labelled" };

function showQueue() {
  const list = $("queue");
  list.replaceChildren();
  for (const row of page.rows) {
    const item = document.createElement("li");
    item.dataset.id = row.id;
    item.dataset.state = row.state;
    if (doc && doc.id === row.id) item.classList.add("current");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = row.name;
    name.title = row.entropy === null ? row.name : `${row.name}: uncertainty ${row.entropy.toFixed(3)}`;
    const state = document.createElement("span");
    state.className = `state ${row.state}`;
    state.textContent = STATE_TEXT[row.state] || row.state;
    item.append(name, state);
    item.addEventListener("click", () => navigate(row.id));
    list.append(item);
  }
  $("queue-note").textContent = page.session && page.session.model
    ? "Most uncertain first; images without a mask before the rest." : "Images without a mask first.";
}

async function refresh() {
  await loadSession();
  await loadQueue();
}

// --- opening an image -------------------------------------------------------------------------------------

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = url;
  });
}

async function openImage(id) {
  setStatus("opening …");
  document.body.dataset.state = "loading";
  const response = await fetch(`/api/images/${id}`);
  if (!response.ok) { setStatus(`${response.status} ${await errorText(response)}`, true); return; }
  const facts = await response.json();
  let image;
  try {
    image = await loadImage(`/api/images/${id}/image`);
  } catch (error) {
    setStatus(`${facts.name}: ${error.message}`, true);
    return;
  }
  let values = null, start = "empty", note = "";
  if (facts.version !== "none") {
    const mask = await fetchMask(`/api/images/${id}/mask`);
    if (mask.error) note = `its mask cannot be shown (${mask.error}); saving replaces it`;
    else { values = mask.values; start = "mask"; facts.version = mask.version; }
  }
  if (values === null && page.session.model) {
    setStatus(`${facts.name}: predicting …`);
    const predicted = await fetchMask(`/api/images/${id}/prediction`);
    if (predicted.error) note = `${note ? `${note}; ` : ""}no prediction (${predicted.error})`;
    else { values = predicted.values; start = "prediction"; }
  }
  if (values === null) values = new Uint8Array(facts.width * facts.height);
  if (values.length !== facts.width * facts.height) {
    setStatus(`${facts.name}: the mask does not fit the image`, true);
    return;
  }
  const maskCanvas = document.createElement("canvas");
  maskCanvas.width = facts.width; maskCanvas.height = facts.height;
  doc = {
    id, facts, image, mask: values, start, version: facts.version, width: facts.width, height: facts.height,
    maskCanvas, maskContext: maskCanvas.getContext("2d"), undo: [], redo: [], savedEdit: 0, stroke: null,
    polygon: [], state: facts.state,
  };
  page.leaving = null;
  paintMask(0, 0, doc.width, doc.height);
  $("placeholder").hidden = true;
  $("conflict").hidden = true;
  fit();
  showDoc();
  for (const item of $("queue").children) item.classList.toggle("current", item.dataset.id === id);
  const current = [...$("queue").children].find((item) => item.dataset.id === id);
  if (current) current.scrollIntoView({ block: "nearest" });
  const origin = { mask: "the mask on disk", prediction: "the model's prediction", empty: "an empty mask" }[start];
  setStatus(note ? `${facts.name}: ${note}` : `${facts.name}: starts from ${origin}`, Boolean(note));
  document.body.dataset.state = "ready";
  document.body.dataset.image = id;
  document.body.dataset.start = start;
}

function dirty() {
  return doc !== null && currentEditOf(doc) !== doc.savedEdit;
}

function currentEditOf(current) { return current.undo.length ? current.undo[current.undo.length - 1].serial : 0; }

function showDoc() {
  if (!doc) return;
  $("image-name").textContent = `${doc.facts.name} (${doc.width}×${doc.height})`;
  $("image-state").textContent = (STATE_TEXT[doc.state] || doc.state) + (dirty() ? " · edited" : "");
  $("accept").hidden = !(doc.start === "prediction" && !dirty());
  $("undo").disabled = doc.undo.length === 0;
  $("redo").disabled = doc.redo.length === 0;
  document.body.dataset.dirty = dirty() ? "yes" : "no";
}

// --- painting the mask and the view -----------------------------------------------------------------------

function paintMask(x, y, w, h) {
  if (w <= 0 || h <= 0) return;
  const pixels = doc.maskContext.createImageData(w, h);
  const out = new Uint32Array(pixels.data.buffer);
  const mask = doc.mask, width = doc.width;
  for (let row = 0; row < h; row += 1) {
    const from = (y + row) * width + x, to = row * w;
    for (let col = 0; col < w; col += 1) out[to + col] = lut[mask[from + col]];
  }
  doc.maskContext.putImageData(pixels, x, y);
}

let frameQueued = false;
function render() {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(draw);
}

function draw() {
  frameQueued = false;
  const canvas = $("view");
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio), height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const context = canvas.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, width, height);
  if (!doc) return;
  context.setTransform(view.scale * ratio, 0, 0, view.scale * ratio, view.x * ratio, view.y * ratio);
  context.imageSmoothingEnabled = view.scale < 1;
  context.drawImage(doc.image, 0, 0, doc.width, doc.height);
  if (page.visible) {
    context.globalAlpha = page.opacity;
    context.imageSmoothingEnabled = false;
    context.drawImage(doc.maskCanvas, 0, 0);
    context.globalAlpha = 1;
  }
  drawPolygon(context);
  drawCursor(context);
}

function drawPolygon(context) {
  const points = doc.polygon;
  if (!points.length) return;
  const color = lut[page.cls];
  context.lineWidth = 2 / view.scale;
  context.strokeStyle = `rgb(${color & 255},${(color >> 8) & 255},${(color >> 16) & 255})`;
  context.fillStyle = "#fff";
  context.beginPath();
  points.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
  if (pointer.image) context.lineTo(pointer.image[0], pointer.image[1]);
  context.stroke();
  for (const [x, y] of points) context.fillRect(x - 3 / view.scale, y - 3 / view.scale, 6 / view.scale, 6 / view.scale);
}

function drawCursor(context) {
  if (!pointer.image || !["brush", "eraser"].includes(page.tool)) return;
  context.lineWidth = 1 / view.scale;
  context.strokeStyle = "#fff";
  context.beginPath();
  context.arc(pointer.image[0], pointer.image[1], page.size / 2, 0, 2 * Math.PI);
  context.stroke();
}

function fit() {
  if (!doc) return;
  const canvas = $("view");
  const scale = Math.min(canvas.clientWidth / doc.width, canvas.clientHeight / doc.height) * 0.98;
  view.scale = scale;
  view.x = (canvas.clientWidth - doc.width * scale) / 2;
  view.y = (canvas.clientHeight - doc.height * scale) / 2;
  render();
}

function zoomAt(factor, cx, cy) {
  const scale = Math.min(64, Math.max(0.02, view.scale * factor));
  view.x = cx - (cx - view.x) * (scale / view.scale);
  view.y = cy - (cy - view.y) * (scale / view.scale);
  view.scale = scale;
  render();
}

function toImage(event) {
  const rect = $("view").getBoundingClientRect();
  return [(event.clientX - rect.left - view.x) / view.scale, (event.clientY - rect.top - view.y) / view.scale];
}

// --- edits (each one undoable) ----------------------------------------------------------------------------

class Box {
  constructor() { this.x0 = Infinity; this.y0 = Infinity; this.x1 = -Infinity; this.y1 = -Infinity; }
  add(x0, y0, x1, y1) {
    this.x0 = Math.min(this.x0, x0); this.y0 = Math.min(this.y0, y0);
    this.x1 = Math.max(this.x1, x1); this.y1 = Math.max(this.y1, y1);
  }
  get empty() { return this.x1 < this.x0 || this.y1 < this.y0; }
}

function copyRect(source, x, y, w, h) {
  const out = new Uint8Array(w * h);
  for (let row = 0; row < h; row += 1) {
    const from = (y + row) * doc.width + x;
    out.set(source.subarray(from, from + w), row * w);
  }
  return out;
}

function putRect(values, x, y, w, h) {
  for (let row = 0; row < h; row += 1) doc.mask.set(values.subarray(row * w, row * w + w), (y + row) * doc.width + x);
  paintMask(x, y, w, h);
}

// An edit starts with a copy of the mask (its extent is not known in advance) and keeps, when it ends,
// only the changed rectangle's values before and after.
function beginEdit() { return { before: doc.mask.slice(), box: new Box() }; }

function endEdit(edit) {
  if (edit.box.empty) return;
  const x = edit.box.x0, y = edit.box.y0, w = edit.box.x1 - x + 1, h = edit.box.y1 - y + 1;
  const before = copyRect(edit.before, x, y, w, h), after = copyRect(doc.mask, x, y, w, h);
  let changed = false;
  for (let i = 0; i < before.length; i += 1) if (before[i] !== after[i]) { changed = true; break; }
  if (!changed) return;
  editCounter += 1;
  doc.undo.push({ x, y, w, h, before, after, serial: editCounter });
  doc.redo = [];
  showDoc();
}

function undo() {
  if (!doc || doc.stroke || !doc.undo.length) return;
  const edit = doc.undo.pop();
  putRect(edit.before, edit.x, edit.y, edit.w, edit.h);
  doc.redo.push(edit);
  showDoc(); render();
}

function redo() {
  if (!doc || doc.stroke || !doc.redo.length) return;
  const edit = doc.redo.pop();
  putRect(edit.after, edit.x, edit.y, edit.w, edit.h);
  doc.undo.push(edit);
  showDoc(); render();
}

function stamp(edit, cx, cy, value) {
  const r = page.size / 2;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(doc.width - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(doc.height - 1, Math.ceil(cy + r));
  if (x1 < x0 || y1 < y0) return;
  const r2 = Math.max(r * r, 0.25);
  const mask = doc.mask, width = doc.width;
  for (let y = y0; y <= y1; y += 1) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x += 1) {
      const dx = x + 0.5 - cx;
      if (dx * dx + dy * dy <= r2) mask[y * width + x] = value;
    }
  }
  edit.box.add(x0, y0, x1, y1);
  paintMask(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
}

function strokeTo(x, y) {
  const stroke = doc.stroke;
  const value = page.tool === "eraser" ? 0 : page.cls;
  const [px, py] = stroke.last;
  const steps = Math.max(1, Math.ceil(Math.hypot(x - px, y - py) / Math.max(0.5, page.size / 4)));
  for (let i = 1; i <= steps; i += 1) stamp(stroke.edit, px + ((x - px) * i) / steps, py + ((y - py) * i) / steps, value);
  stroke.last = [x, y];
  render();
}

function fillPolygon(points) {
  const edit = beginEdit();
  const ys = points.map((p) => p[1]);
  const top = Math.max(0, Math.floor(Math.min(...ys))), bottom = Math.min(doc.height - 1, Math.ceil(Math.max(...ys)));
  for (let y = top; y <= bottom; y += 1) {
    const cy = y + 0.5, crossings = [];
    for (let i = 0; i < points.length; i += 1) {
      const [ax, ay] = points[i], [bx, by] = points[(i + 1) % points.length];
      if ((ay <= cy && by > cy) || (by <= cy && ay > cy)) crossings.push(ax + ((cy - ay) / (by - ay)) * (bx - ax));
    }
    crossings.sort((a, b) => a - b);
    for (let k = 0; k + 1 < crossings.length; k += 2) {
      const x0 = Math.max(0, Math.ceil(crossings[k] - 0.5)), x1 = Math.min(doc.width - 1, Math.ceil(crossings[k + 1] - 0.5) - 1);
      if (x1 < x0) continue;
      doc.mask.fill(page.cls, y * doc.width + x0, y * doc.width + x1 + 1);
      edit.box.add(x0, y, x1, y);
    }
  }
  if (!edit.box.empty) paintMask(edit.box.x0, edit.box.y0, edit.box.x1 - edit.box.x0 + 1, edit.box.y1 - edit.box.y0 + 1);
  endEdit(edit);
  render();
}

function floodFill(x, y) {
  const width = doc.width, height = doc.height, mask = doc.mask;
  const target = mask[y * width + x], value = page.cls;
  if (target === value) return;
  const edit = beginEdit();
  const stack = [y * width + x];
  mask[y * width + x] = value;
  while (stack.length) {
    const at = stack.pop();
    const px = at % width, py = (at - px) / width;
    edit.box.add(px, py, px, py);
    if (px > 0 && mask[at - 1] === target) { mask[at - 1] = value; stack.push(at - 1); }
    if (px < width - 1 && mask[at + 1] === target) { mask[at + 1] = value; stack.push(at + 1); }
    if (py > 0 && mask[at - width] === target) { mask[at - width] = value; stack.push(at - width); }
    if (py < height - 1 && mask[at + width] === target) { mask[at + width] = value; stack.push(at + width); }
  }
  paintMask(edit.box.x0, edit.box.y0, edit.box.x1 - edit.box.x0 + 1, edit.box.y1 - edit.box.y0 + 1);
  endEdit(edit);
  render();
}

async function takeRegion(x, y) {
  setStatus("asking the model …");
  const response = await fetch(`/api/images/${doc.id}/region?x=${x}&y=${y}`, { method: "POST" });
  if (!response.ok) { setStatus(`region: ${response.status} ${await errorText(response)}`, true); return; }
  const answer = await response.json();
  const bytes = Uint8Array.from(atob(answer.region), (c) => c.charCodeAt(0));
  const region = await inflate(bytes);
  const edit = beginEdit();
  for (let row = 0; row < answer.height; row += 1) {
    for (let col = 0; col < answer.width; col += 1) {
      if (region[row * answer.width + col]) doc.mask[(answer.y + row) * doc.width + answer.x + col] = page.cls;
    }
  }
  edit.box.add(answer.x, answer.y, answer.x + answer.width - 1, answer.y + answer.height - 1);
  paintMask(answer.x, answer.y, answer.width, answer.height);
  endEdit(edit);
  render();
  setStatus(`took the model's ${className(answer.class)} region (${answer.pixels} px) as ${className(page.cls)}`);
}

// --- pointer and keyboard -------------------------------------------------------------------------------

const pointer = { image: null, panning: null, space: false };

function inside(x, y) { return x >= 0 && y >= 0 && x < doc.width && y < doc.height; }

function onPointerDown(event) {
  if (!doc) return;
  const canvas = $("view");
  canvas.setPointerCapture(event.pointerId);
  const [x, y] = toImage(event);
  if (event.button === 1 || event.button === 2 || page.tool === "pan" || pointer.space) {
    pointer.panning = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y };
    return;
  }
  if (event.button !== 0) return;
  if (page.tool === "brush" || page.tool === "eraser") {
    doc.stroke = { edit: beginEdit(), last: [x, y] };
    strokeTo(x, y);
  } else if (page.tool === "polygon") {
    addPolygonPoint(x, y);
  } else if (page.tool === "fill" && inside(x, y)) {
    floodFill(Math.floor(x), Math.floor(y));
  } else if (page.tool === "region" && inside(x, y)) {
    takeRegion(Math.floor(x), Math.floor(y));
  }
}

function onPointerMove(event) {
  if (!doc) return;
  const [x, y] = toImage(event);
  pointer.image = [x, y];
  if (pointer.panning) {
    view.x = pointer.panning.vx + event.clientX - pointer.panning.x;
    view.y = pointer.panning.vy + event.clientY - pointer.panning.y;
  } else if (doc.stroke) {
    strokeTo(x, y);
  }
  const ix = Math.floor(x), iy = Math.floor(y);
  $("cursor").textContent = inside(ix, iy) ? `x ${ix}, y ${iy}: ${className(doc.mask[iy * doc.width + ix])}` : "";
  render();
}

function onPointerUp() {
  pointer.panning = null;
  if (doc && doc.stroke) {
    const stroke = doc.stroke;
    doc.stroke = null;
    endEdit(stroke.edit);
    render();
  }
}

function addPolygonPoint(x, y) {
  const points = doc.polygon;
  if (points.length >= 3) {
    const [fx, fy] = points[0];
    if (Math.hypot((x - fx) * view.scale, (y - fy) * view.scale) <= 8) { closePolygon(); return; }
  }
  points.push([x, y]);
  render();
}

function closePolygon() {
  const points = doc.polygon;
  doc.polygon = [];
  if (points.length >= 3) fillPolygon(points);
  render();
}

function pickTool(tool) {
  if (tool === "region" && !(page.session && page.session.model)) return;
  page.tool = tool;
  if (doc && tool !== "polygon") doc.polygon = [];
  for (const button of document.querySelectorAll(".tool")) button.classList.toggle("active", button.dataset.tool === tool);
  $("viewport").classList.toggle("pan", tool === "pan");
  render();
}

function setSize(size) {
  page.size = Math.max(1, Math.min(200, Math.round(size)));
  $("size").value = String(page.size);
  $("size-value").textContent = String(page.size);
  render();
}

const TOOL_KEYS = { b: "brush", e: "eraser", p: "polygon", g: "fill", r: "region", h: "pan" };

function onKeyDown(event) {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  const key = event.key;
  const command = event.ctrlKey || event.metaKey;
  if (command && key.toLowerCase() === "z") { event.preventDefault(); if (event.shiftKey) redo(); else undo(); return; }
  if (command && key.toLowerCase() === "y") { event.preventDefault(); redo(); return; }
  if (command && key.toLowerCase() === "s") { event.preventDefault(); save(); return; }
  if (command || event.altKey) return;
  if (/^[0-9]$/.test(key)) { pickClass(Number(key)); return; }
  if (TOOL_KEYS[key.toLowerCase()]) { pickTool(TOOL_KEYS[key.toLowerCase()]); return; }
  if (key === "[") setSize(page.size > 10 ? page.size / 1.25 : page.size - 1);
  else if (key === "]") setSize(page.size >= 10 ? page.size * 1.25 : page.size + 1);
  else if (key === "Escape" && doc) { doc.polygon = []; render(); }
  else if (key === "Enter" && doc && doc.polygon.length) closePolygon();
  else if (key === "Backspace" && doc && doc.polygon.length) { doc.polygon.pop(); render(); }
  else if (key === "ArrowRight" || key === ".") step(1);
  else if (key === "ArrowLeft" || key === ",") step(-1);
  else if (key === "Home") fit();
  else if (key === "+" || key === "=") zoomAt(1.25, $("view").clientWidth / 2, $("view").clientHeight / 2);
  else if (key === "-") zoomAt(0.8, $("view").clientWidth / 2, $("view").clientHeight / 2);
  else if (key.toLowerCase() === "v") { $("visible").checked = !$("visible").checked; setVisible(); }
  else if (key.toLowerCase() === "a") accept();
  else if (key === " ") { pointer.space = true; event.preventDefault(); return; }
  else return;
  event.preventDefault();
}

function setVisible() { page.visible = $("visible").checked; render(); }

// --- saving and moving on -------------------------------------------------------------------------------

async function save(version = null) {
  if (!doc) return false;
  const current = doc;
  if (current.start === "mask" && !dirty() && version === null) { setStatus("nothing to save: no edits"); return true; }
  const serial = currentEditOf(current);
  setStatus("saving …");
  const body = await deflate(current.mask);
  const query = new URLSearchParams({ version: version || current.version, start: current.start,
    width: String(current.width), height: String(current.height) });
  const response = await fetch(`/api/images/${current.id}/mask?${query}`, {
    method: "POST", body, headers: { "Content-Type": "application/octet-stream" } });
  if (response.status === 409) {
    current.conflictVersion = response.headers.get("X-Mask-Version");
    $("conflict-text").textContent = await errorText(response);
    $("conflict").hidden = false;
    setStatus("not saved: the mask changed on disk", true);
    document.body.dataset.saved = "conflict";
    return false;
  }
  if (!response.ok) {
    setStatus(`not saved: ${response.status} ${await errorText(response)}`, true);
    document.body.dataset.saved = "error";
    return false;
  }
  const answer = await response.json();
  current.version = answer.version;
  current.state = answer.state;
  current.savedEdit = serial;
  current.start = "mask";
  $("conflict").hidden = true;
  if (current === doc) { showDoc(); setStatus(`saved as ${answer.state}`); }
  document.body.dataset.saved = answer.version;
  refresh();
  return true;
}

async function accept() {
  if (doc && doc.start === "prediction" && !dirty()) await save();
}

async function navigate(id) {
  if (doc && id === doc.id) return;
  if (dirty() && page.leaving !== id) {
    page.leaving = id;
    setStatus("unsaved edits: save them (Ctrl+S), or move again to leave them", true);
    return;
  }
  await openImage(id);
}

function step(direction) {
  if (!page.rows.length) return;
  const index = doc ? page.rows.findIndex((row) => row.id === doc.id) : -1;
  const next = page.rows[Math.min(page.rows.length - 1, Math.max(0, index + direction))];
  if (next) navigate(next.id);
}

async function reloadModel() {
  setStatus("looking for a newer model …");
  const response = await fetch("/api/model/reload", { method: "POST" });
  if (!response.ok) { setStatus(`reload: ${response.status} ${await errorText(response)}`, true); return; }
  page.session = await response.json();
  showSession();
  await loadQueue();
  setStatus(`loaded ${page.session.model.id}; the queue is ranked again as its predictions come in`);
}

// --- wiring -----------------------------------------------------------------------------------------------

function wire() {
  const canvas = $("view");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("pointercancel", onPointerUp);
  canvas.addEventListener("pointerleave", () => { pointer.image = null; render(); });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX - rect.left, event.clientY - rect.top);
  }, { passive: false });
  document.addEventListener("keydown", onKeyDown);
  document.addEventListener("keyup", (event) => { if (event.key === " ") pointer.space = false; });
  window.addEventListener("resize", render);
  window.addEventListener("beforeunload", (event) => { if (dirty()) event.preventDefault(); });
  for (const button of document.querySelectorAll(".tool")) button.addEventListener("click", () => pickTool(button.dataset.tool));
  $("size").addEventListener("input", () => setSize(Number($("size").value)));
  $("opacity").addEventListener("input", () => {
    page.opacity = Number($("opacity").value) / 100;
    $("opacity-value").textContent = `${$("opacity").value}%`;
    render();
  });
  $("visible").addEventListener("change", setVisible);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("fit").addEventListener("click", fit);
  $("save").addEventListener("click", () => save());
  $("accept").addEventListener("click", accept);
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("filter").addEventListener("change", () => { page.filter = $("filter").value; loadQueue(); });
  $("reload-model").addEventListener("click", reloadModel);
  $("conflict-load").addEventListener("click", () => { const id = doc.id; doc = null; openImage(id); });
  $("conflict-overwrite").addEventListener("click", () => save(doc.conflictVersion));
  // Tests and scripts find where an image pixel is on screen (the page itself never needs this).
  window.masksmithLabel = {
    toClient(x, y) {
      const rect = canvas.getBoundingClientRect();
      return [rect.left + view.x + x * view.scale, rect.top + view.y + y * view.scale];
    },
    get scale() { return view.scale; },
  };
}

async function start() {
  wire();
  pickTool("brush");
  await loadSession();
  if (!page.session) return;
  buildLut();
  buildLegend();
  await loadQueue();
  document.body.dataset.state = "queue";
  // The queue's order and the counts change as the model predicts: refresh them while it does.
  setInterval(async () => {
    const progress = page.session && page.session.progress;
    if (progress && progress.done + progress.failed < progress.total) await refresh();
  }, 3000);
  if (page.rows.length) openImage(page.rows[0].id);
}

start();
