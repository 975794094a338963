// The page at /: pick a model, drop images, see each one's top classes, its prediction set and how unlike the
// training data it is, and the image as the model saw it; label what the labeling queue offers.
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

const models = {};  // name -> the listing's entry (its version, what its answers can carry)

async function loadModels() {
  const response = await fetch("models");
  if (!response.ok) throw new Error(await errorMessage(response));
  const listing = await response.json();
  for (const model of listing.models) models[model.name] = model;
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

// "90% set (per class): Coat, Pullover", marked unsure past the asked size; an empty set says why it is empty.
function setLine(predictionSet) {
  const level = `${Math.round(predictionSet.coverage * 100)}% set (${predictionSet.guarantee.replace("_", " ")})`;
  const labels = predictionSet.labels.length ? predictionSet.labels.join(", ")
    : "empty: the coverage asked is met without naming a label for this image";
  const line = element("p", {class: "prediction-set", text: `${level}: ${labels}`});
  if (predictionSet.unsure) line.append(" ", element("span", {class: "unsure", text: "unsure"}));
  return line;
}

function oodLine(ood) {
  const unusual = ood.p_value <= 0.01;
  return element("p", {class: unusual ? "ood unusual" : "ood",
                       text: `${unusual ? "Unlike" : "Like"} the training data (p = ${ood.p_value.toPrecision(2)})`});
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
  let url = `predict?model=${encodeURIComponent(model)}&top_k=${topK}&include=input`;
  const coverage = $("#coverage").value;
  if (coverage && models[model] && models[model].uncertainty.prediction_sets) {
    url += `&coverage=${coverage}&abstain_above=${$("#abstain-above").value}`;
  }
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
    bars(prediction.top),
    ...(prediction.prediction_set ? [setLine(prediction.prediction_set)] : []),
    ...(prediction.out_of_distribution ? [oodLine(prediction.out_of_distribution)] : []));
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

// --- the label view -----------------------------------------------------------------------------------------

function showQueueError(message) {
  const box = $("#queue-error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadQueue() {
  showQueueError("");
  const model = $("#model").value;
  const response = await fetch(`feedback/queue?model=${encodeURIComponent(model)}&limit=12`,
                               {headers: {Authorization: `Bearer ${$("#token").value}`}});
  if (!response.ok) return showQueueError(await errorMessage(response));
  const queue = await response.json();
  const classes = models[model] ? models[model].classes : [];
  $("#queue").replaceChildren(...queue.items.map((item) => queueItem(queue.model, item, classes)));
  if (!queue.items.length) showQueueError("Nothing to label: no retained prediction of this model is waiting.");
}

function queueItem(model, item, classes) {
  const seen = item.input;
  const facts = [];
  if (item.prediction_set) {
    facts.push(setLine({coverage: 0.9, guarantee: "per_class", labels: item.prediction_set, unsure: item.unsure}));
  }
  if (item.ood_p_value != null) facts.push(oodLine({p_value: item.ood_p_value}));
  // The set's labels first: the true one is most likely among them.
  const ordered = [...(item.prediction_set || []), ...classes.filter((c) => !(item.prediction_set || []).includes(c))];
  const buttons = element("div", {class: "label-buttons"}, ...ordered.map((label) => {
    const button = element("button", {type: "button", class: "label-button", text: label});
    button.addEventListener("click", () => sendLabel(model, item.id, label, entry));
    return button;
  }));
  const entry = element("li", {class: "queued", "data-id": item.id},
    element("figure", {class: "as-seen"},
      element("img", {alt: `retained input ${item.id.slice(0, 8)} as the model saw it`,
                      src: `data:image/png;base64,${seen.png_base64}`}),
      element("figcaption", {text: `predicted ${item.predicted_label} (v${item.model_version})`})),
    element("div", {class: "answer"}, ...facts, buttons));
  return entry;
}

async function sendLabel(model, id, label, entry) {
  const response = await fetch("feedback", {
    method: "POST",
    headers: {"Content-Type": "application/json", Authorization: `Bearer ${$("#token").value}`},
    body: JSON.stringify({model, id, label})});
  const answer = entry.querySelector(".answer");
  if (!response.ok) {
    answer.append(element("p", {class: "error", role: "alert", text: await errorMessage(response)}));
    return;
  }
  entry.classList.add("labeled");
  answer.querySelector(".label-buttons").replaceChildren(element("p", {class: "labeled-as", text: `labeled ${label}`}));
}

function wireUp() {
  $("#queue-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadQueue().catch((failure) => showQueueError(failure.message));
  });
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
