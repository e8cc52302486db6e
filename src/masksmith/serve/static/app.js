// The masksmith web page: send an image to /v1/segment, draw its mask over it, show the model card.
"use strict";

const $ = (id) => document.getElementById(id);
let card = null;       // GET /v1/model
let lastFile = null;   // the image the result shown belongs to
let lastAnswer = null; // its JSON answer

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

// COCO compressed RLE counts (pycocotools' string form) -> run lengths, as the format defines them:
// 6-bit chunks offset by 48, 5 data bits each, bit 0x20 = "more", and after the second run each value
// is a difference from the run two before.
function rleRuns(text) {
  const runs = [];
  let p = 0;
  while (p < text.length) {
    let value = 0, k = 0, more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      value |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) value |= -1 << (5 * k);
    }
    if (runs.length > 2) value += runs[runs.length - 2];
    runs.push(value);
  }
  return runs;
}

// The class-index mask (row-major Uint8Array) from the per-class RLEs (column-major, runs of 0s then 1s).
function decodeMask(answer) {
  const { width, height } = answer;
  const mask = new Uint8Array(width * height);
  for (const entry of answer.rle) {
    let index = 0, inside = false;
    for (const run of rleRuns(entry.counts)) {
      if (inside) {
        for (let i = index; i < index + run; i += 1) {
          mask[(i % height) * width + Math.floor(i / height)] = entry.class;
        }
      }
      index += run; inside = !inside;
    }
  }
  return mask;
}

function drawMask(answer) {
  const canvas = $("mask");
  canvas.width = answer.width; canvas.height = answer.height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(answer.width, answer.height);
  const colors = answer.classes.map((c) => c.color);
  const mask = decodeMask(answer);
  for (let i = 0; i < mask.length; i += 1) {
    const cls = mask[i];
    if (cls === 0 || cls >= colors.length) continue; // background (and ignore) stay see-through
    pixels.data.set([...colors[cls], 255], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
}

function drawImage(file, width, height) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    const paint = (ok) => {
      for (const id of ["original", "base"]) {
        const canvas = $(id);
        canvas.width = width; canvas.height = height;
        if (ok) canvas.getContext("2d").drawImage(image, 0, 0, width, height);
      }
      URL.revokeObjectURL(url);
      resolve(ok);
    };
    image.onload = () => paint(true);
    image.onerror = () => paint(false); // e.g. TIFF, which browsers do not display: the mask still shows
    image.src = url;
  });
}

function showLegend(answer) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  for (const entry of answer.classes) {
    const row = document.createElement("tr");
    row.dataset.class = entry.name;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${entry.color.join(",")})`;
    const cells = [swatch, entry.name, entry.pixels.toLocaleString("en"), `${(100 * entry.share).toFixed(1)}%`];
    cells.forEach((value, column) => {
      const cell = document.createElement("td");
      if (column >= 2) cell.className = "num";
      cell.append(value);
      row.append(cell);
    });
    body.append(row);
  }
}

function showLatency(answer, seconds) {
  const t = answer.timings_ms;
  $("latency").textContent = `${(1000 * seconds).toFixed(0)} ms round trip (server: decode ${t.decode.toFixed(1)}, ` +
    `queue ${t.queue.toFixed(1)}, inference ${t.inference.toFixed(1)}, encode ${t.encode.toFixed(1)} ms); ` +
    `${answer.width}×${answer.height} px`;
}

async function segment(file) {
  setStatus(`Segmenting ${file.name} …`);
  const form = new FormData();
  form.append("image", file, file.name);
  const started = performance.now();
  const response = await fetch("/v1/segment?format=json", { method: "POST", body: form });
  if (!response.ok) {
    setStatus(`${file.name}: ${response.status} ${await errorText(response)}`, true);
    return;
  }
  const answer = await response.json();
  const seconds = (performance.now() - started) / 1000;
  lastFile = file; lastAnswer = answer;
  $("result").hidden = false;
  const shown = await drawImage(file, answer.width, answer.height);
  drawMask(answer);
  showLegend(answer);
  showLatency(answer, seconds);
  setStatus(shown ? `${file.name}: done.` : `${file.name}: done (this browser cannot display the image itself).`);
  document.body.dataset.state = "done"; // for tests and scripts: the overlay is drawn
}

function stem(name) { return name.replace(/\.[^.]+$/, "") || "image"; }

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function downloadMask() {
  if (!lastFile) return;
  // The palette PNG masksmith predict would write: asked of the server (the same image gives the same mask).
  const form = new FormData();
  form.append("image", lastFile, lastFile.name);
  const response = await fetch("/v1/segment?format=png", { method: "POST", body: form });
  if (!response.ok) { setStatus(`mask: ${response.status} ${await errorText(response)}`, true); return; }
  download(await response.blob(), `${stem(lastFile.name)}.png`);
}

function downloadJson() {
  if (!lastAnswer) return;
  download(new Blob([JSON.stringify(lastAnswer, null, 1)], { type: "application/json" }), `${stem(lastFile.name)}.json`);
}

function fact(list, name, value) {
  const term = document.createElement("dt"); term.textContent = name;
  const detail = document.createElement("dd"); detail.textContent = value;
  list.append(term, detail);
}

function showCard() {
  const list = $("card-facts");
  list.replaceChildren();
  $("model-id").textContent = card.id;
  fact(list, "model", `${card.architecture} (${card.file}), ${card.backend} backend, ${card.threads} threads`);
  fact(list, "classes", card.classes.map((c) => c.name).join(", "));
  fact(list, "input", `${card.input.size} px (${card.input.resize}), ${card.input.channels} channel(s); ${card.input.tiling}`);
  const training = card.training;
  const split = training.split || {};
  const splitText = split.kind ? `${split.kind} split${split.val_images !== undefined ? `, ${split.val_images} validation images` : ""}` : "split not recorded";
  fact(list, "training data", `${training.data || "name not recorded"} (${splitText})`);
  const validation = card.validation;
  if (validation.scores) {
    const scores = Object.entries(validation.scores).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(", ");
    fact(list, "validation", `${scores} — from ${validation.source}`);
  } else {
    fact(list, "validation", validation.note);
  }
  fact(list, "checksum", card.checksum);
  fact(list, "versions", `served by masksmith ${card.masksmith_version}, trained with ${card.trained_with}`);
}

async function loadCard() {
  const response = await fetch("/v1/model");
  if (!response.ok) {
    setStatus(`model card: ${response.status} ${await errorText(response)}`, true);
    return;
  }
  card = await response.json();
  showCard();
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => { if (event.target.files[0]) segment(event.target.files[0]); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault(); drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) segment(file);
  });
  const opacity = () => {
    $("mask").style.opacity = $("opacity").value / 100;
    $("opacity-value").textContent = `${$("opacity").value}%`;
  };
  $("opacity").addEventListener("input", opacity);
  opacity();
  $("download-mask").addEventListener("click", downloadMask);
  $("download-json").addEventListener("click", downloadJson);
  loadCard();
}

wire();
