// The page at /: pick a model, drop images, see each one's top classes and the image as the model saw it.
// Plain DOM, no build step; text goes in through textContent, never as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

// A bar's width goes through the CSSOM: a style attribute would need 'unsafe-inline' in the page's policy.
function barFill(probability) {
  const fill = element("span", {class: "bar-fill"});
  fill.style.width = percent(probability);
  return fill;
}

function percent(value, digits = 1) {
  return (100 * value).toFixed(digits) + "%";
}

// The message of an error answer in any of the service's shapes, or a readable stand-in.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return typeof body.error === "string" ? body.error : body.error.message;
  } catch (ignored) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

function showPageError(message) {
  const box = $("#page-error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadModels() {
  const response = await fetch("models");
  if (!response.ok) throw new Error(await errorMessage(response));
  const listing = await response.json();
  const select = $("#model");
  select.replaceChildren(...listing.models.map((model) =>
    element("option", {value: model.name, text: `${model.name} (v${model.version})`})));
  select.value = listing.default_model;
  await showCard(select.value);
}

async function showCard(name) {
  const [detailResponse, historyResponse] = await Promise.all([
    fetch(`models/${encodeURIComponent(name)}`), fetch(`models/${encodeURIComponent(name)}/history`)]);
  if (!detailResponse.ok) throw new Error(await errorMessage(detailResponse));
  const model = await detailResponse.json();
  const test = model.metrics.test;
  $("#card-title").textContent = `Model card: ${model.name}`;
  $("#card-summary").replaceChildren(element("dl", {},
    element("dt", {text: "version"}), element("dd", {id: "card-version", text: `v${model.version}`}),
    element("dt", {text: "test accuracy"}),
    element("dd", {id: "card-accuracy", text: `${percent(model.metrics.served_test_accuracy, 2)} as served ` +
      `(${model.runtime}), ${percent(test.accuracy, 2)} Keras, on ${test.samples.toLocaleString()} test images`}),
    element("dt", {text: "input"}),
    element("dd", {text: `${model.input.shape.join("x")} ${model.input.color_mode}, values in [0, 1]`}),
    element("dt", {text: "classes"}), element("dd", {text: model.classes.join(", ")})));
  $("#per-class tbody").replaceChildren(...test.per_class.map((row) => element("tr", {},
    element("td", {text: row.class}), element("td", {text: percent(row.precision)}),
    element("td", {text: percent(row.recall)}), element("td", {text: percent(row.f1)}))));
  // The version in the URL keeps the browser from showing the previous version's cached plot.
  for (const [id, file] of [["#confusion-matrix", "confusion_matrix.png"], ["#learning-curves", "learning_curves.png"]]) {
    $(id).src = `models/${encodeURIComponent(name)}/files/${file}?v=${model.version}`;
  }
  const events = historyResponse.ok ? (await historyResponse.json()).events : [];
  $("#history tbody").replaceChildren(...events.map((event) => element("tr", {},
    element("td", {text: event.time || ""}), element("td", {text: event.event}),
    element("td", {text: event.version == null ? "" : `v${event.version}`}),
    element("td", {text: event.promoted ? "yes" : "no"}), element("td", {text: event.reason || ""}))));
}

function bars(top) {
  return element("ul", {class: "bars"}, ...top.map((entry) => element("li", {class: "bar"},
    element("span", {class: "bar-label", text: entry.label}),
    element("span", {class: "bar-track"}, barFill(entry.probability)),
    element("span", {class: "bar-value", text: percent(entry.probability)}))));
}

async function classify(file, model, topK) {
  const item = element("li", {class: "result pending"},
    element("figure", {class: "original"}, element("img", {alt: `Uploaded: ${file.name}`}),
      element("figcaption", {text: file.name})),
    element("div", {class: "answer", text: "classifying…"}));
  $("#results").prepend(item);
  if (file.type.startsWith("image/")) item.querySelector(".original img").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file, file.name);
  const url = `predict?model=${encodeURIComponent(model)}&top_k=${topK}&include=input`;
  let response;
  try {
    response = await fetch(url, {method: "POST", body: form});
  } catch (failure) {
    // A body over the upload limit can be refused before it is sent; the browser then sees no answer at all.
    return showResultError(item, `the upload failed before the server answered (${failure.message}); ` +
      "a file larger than the upload limit is refused this way");
  }
  if (!response.ok) return showResultError(item, await errorMessage(response));
  const body = await response.json();
  const prediction = body.predictions[0];
  const seen = prediction.input;
  item.classList.remove("pending");
  item.querySelector(".answer").replaceChildren(
    element("p", {class: "top-label", text: prediction.top[0].label}),
    element("p", {class: "model-version",
                  text: `${body.model} v${body.version}: ${percent(prediction.top[0].probability)} on the top class`}),
    bars(prediction.top));
  item.insertBefore(element("figure", {class: "as-seen"},
    element("img", {alt: `${file.name} as the model saw it, ${seen.width}x${seen.height}`,
                    src: `data:image/png;base64,${seen.png_base64}`}),
    element("figcaption", {text: `as the model saw it (${seen.width}x${seen.height})`})), item.querySelector(".answer"));
}

function showResultError(item, message) {
  item.classList.remove("pending");
  item.classList.add("failed");
  item.querySelector(".answer").replaceChildren(element("p", {class: "error", role: "alert", text: message}));
}

async function classifyFiles(files) {
  const model = $("#model").value;
  const topK = $("#top-k").value;
  // One request per file, one after another: each file gets its own answer or its own error.
  for (const file of files) await classify(file, model, topK);
}

function wireUp() {
  const zone = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", async () => {
    await classifyFiles([...input.files]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    classifyFiles([...event.dataTransfer.files]);
  });
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") input.click(); });
  $("#model").addEventListener("change", () => showCard($("#model").value).catch((e) => showPageError(e.message)));
}

wireUp();
loadModels().catch((failure) => showPageError(`Could not load the models: ${failure.message}`));
