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

// --- the API key ---------------------------------------------------------------------------------------------
// A server with API keys on refuses the API without one; the page then asks for it. The key is kept for this tab
// only (sessionStorage, gone when the tab closes) and sent as X-API-Key, so the label view's feedback token can
// still travel in Authorization beside it.

const KEY_STORAGE = "image-classifier.api-key";

// Thrown by a call the server refused for want of a valid key; the key form already says so.
class KeyNeeded extends Error {}

function withKey(options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.set("X-API-Key", key);
  return {...options, headers};
}

// A call to an endpoint behind API keys: throws KeyNeeded, after showing the key form, when the key is missing
// or refused; any other answer is the caller's to read.
async function callApi(url, options = {}) {
  const response = await fetch(url, withKey(options));
  if (response.status === 401) {
    askForKey("This server needs an API key. Enter yours to use the models.");
    throw new KeyNeeded("this server needs an API key: enter it above");
  }
  if (response.status === 403 && await keyRefused(response.clone())) {
    sessionStorage.removeItem(KEY_STORAGE);
    askForKey(`The server refused this API key: ${await errorMessage(response)}.`);
    throw new KeyNeeded("the server refused the API key: enter another above");
  }
  return response;
}

// A 403 is either a key the server does not know or a model outside the key's scope; the model listing, which
// names no model, is refused only for the first.
async function keyRefused(response) {
  try {
    if ((await response.json()).error.code !== "forbidden") return false;
  } catch (ignored) { return false; }
  const probe = await fetch("models", withKey());
  return probe.status === 403;
}

function askForKey(message) {
  $("#api-key-message").textContent = message;
  $("#api-key").hidden = false;
  showPageError("");
  $("#api-key-input").focus();
}

function useKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#api-key").hidden = true;
  $("#api-key-input").value = "";
  loadModels().catch(showLoadError);
}

function showLoadError(failure) {
  if (!(failure instanceof KeyNeeded)) showPageError(`Could not load the models: ${failure.message}`);
}

// --- classify ------------------------------------------------------------------------------------------------

const models = {};  // name -> the listing's entry (its version, what its answers can carry)

async function loadModels() {
  const response = await callApi("models");
  if (!response.ok) throw new Error(await errorMessage(response));
  const listing = await response.json();
  for (const name of Object.keys(models)) delete models[name];
  for (const model of listing.models) models[model.name] = model;
  const select = $("#model");
  select.replaceChildren(...listing.models.map((model) =>
    element("option", {value: model.name, text: `${model.name} (v${model.version})`})));
  if (!listing.models.length) throw new Error("this API key may not call any of the served models");
  // A key limited to some models may not list the server's default.
  select.value = Object.hasOwn(models, listing.default_model) ? listing.default_model : listing.models[0].name;
  await showCard(select.value);
}

// The version on trial beside the served one, if any: what it has done on live traffic so far.
function trialRows(candidate) {
  if (!candidate) return [];
  const shadow = candidate.shadow;
  const live = shadow.images ? `${shadow.images.toLocaleString()} live images shadowed, top-1 agreement ` +
    `${percent(shadow.agreement, 1)}, mean top-1 probability ${percent(shadow.mean_top1.candidate, 1)} ` +
    `(served: ${percent(shadow.mean_top1.served, 1)})` : "no live images shadowed yet";
  const canary = candidate.canary_percent ? `; answering ${candidate.canary_percent}% of inputs as the canary` : "";
  return [element("dt", {text: "on trial"}),
    element("dd", {id: "card-trial", text: `v${candidate.version}: ${live}${canary}`})];
}

async function showCard(name) {
  const [detailResponse, historyResponse] = await Promise.all([
    callApi(`models/${encodeURIComponent(name)}`), callApi(`models/${encodeURIComponent(name)}/history`)]);
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
    element("dt", {text: "classes"}), element("dd", {text: model.classes.join(", ")}),
    ...trialRows(model.candidate)));
  $("#per-class tbody").replaceChildren(...test.per_class.map((row) => element("tr", {},
    element("td", {text: row.class}), element("td", {text: percent(row.precision)}),
    element("td", {text: percent(row.recall)}), element("td", {text: percent(row.f1)}))));
  // The version in the URL keeps the browser from showing the previous version's cached plot.
  for (const [id, file] of [["#confusion-matrix", "confusion_matrix.png"], ["#learning-curves", "learning_curves.png"]]) {
    showPlot($(id), `models/${encodeURIComponent(name)}/files/${file}?v=${model.version}`);
  }
  const events = historyResponse.ok ? (await historyResponse.json()).events : [];
  $("#history tbody").replaceChildren(...events.map((event) => element("tr", {},
    element("td", {text: event.time || ""}), element("td", {text: event.event}),
    element("td", {text: event.version == null ? "" : `v${event.version}`}),
    element("td", {text: event.promoted ? "yes" : "no"}), element("td", {text: event.reason || ""}))));
}

// Fetched rather than linked: an <img src> cannot send the API key. Shown from a blob: URL, freed once replaced.
async function showPlot(image, url) {
  let response;
  try {
    response = await callApi(url);
  } catch (ignored) { return; }  // the plot stays empty; a refused key is on the key form already
  if (!response.ok) return;
  if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(await response.blob());
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
    response = await callApi(url, {method: "POST", body: form});
  } catch (failure) {
    if (failure instanceof KeyNeeded) return showResultError(item, failure.message);
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
                               withKey({headers: {Authorization: `Bearer ${$("#token").value}`}}));
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
  const response = await fetch("feedback", withKey({
    method: "POST",
    headers: {"Content-Type": "application/json", Authorization: `Bearer ${$("#token").value}`},
    body: JSON.stringify({model, id, label})}));
  const answer = entry.querySelector(".answer");
  if (!response.ok) {
    answer.append(element("p", {class: "error", role: "alert", text: await errorMessage(response)}));
    return;
  }
  entry.classList.add("labeled");
  answer.querySelector(".label-buttons").replaceChildren(element("p", {class: "labeled-as", text: `labeled ${label}`}));
}

function wireUp() {
  $("#api-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key-input").value.trim();
    if (key) useKey(key);
  });
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
  $("#model").addEventListener("change", () => showCard($("#model").value).catch((failure) => {
    if (!(failure instanceof KeyNeeded)) showPageError(failure.message);
  }));
}

wireUp();
loadModels().catch(showLoadError);
