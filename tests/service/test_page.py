"""The page at / in a real browser: Debian's headless Chromium driven through its chromedriver by selenium.

Skipped when Chromium is missing, except with REQUIRE_BROWSER=1 (CI), where that fails. A screenshot of each
step is kept in TEST_ARTIFACTS_DIR (default: test-artifacts/ in the repository).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, png_bytes

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts"))
WAIT_SECONDS = 30


def _find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _find("chromium", "chromium-browser"), _find("chromedriver")
    if not (chromium and driver):
        message = "Debian's chromium and chromium-driver are needed for the browser tests"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # No network beyond loopback here: without these Chromium keeps trying Google's hosts.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages: CSP violations
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield session
    session.quit()


def wait_for(browser, condition, message: str):
    return WebDriverWait(browser, WAIT_SECONDS).until(condition, message)


def latest_result(browser):
    """The newest result, once it is no longer pending."""
    def settled(driver):
        items = driver.find_elements(By.CSS_SELECTOR, "#results > li")
        return items[0] if items and "pending" not in items[0].get_attribute("class") else False
    return wait_for(browser, settled, "no answer appeared")


def choose_file(browser, path: Path) -> None:
    browser.find_element(By.ID, "file-input").send_keys(str(path))


def screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert browser.save_screenshot(str(path))
    return path


def served_top1(server, model: str, image: bytes, headers: dict | None = None) -> str:
    return requests.post(f"{server.url}/predict?model={model}", files={"image": ("x", image)}, headers=headers,
                         timeout=30).json()["predictions"][0]["top"][0]["label"]


def classify_a_test_image_it_gets_right(browser, server, fashion, tmp_path, headers=None):
    """Drop through the page a real Fashion-MNIST test image the model gets right; its true label must be shown,
    with bars. (The result element, the classes, the image's index.)"""
    classes = requests.get(server.url + "/models/fashion_mnist", headers=headers, timeout=10).json()["classes"]
    index = next(i for i in range(50)
                 if served_top1(server, "fashion_mnist", png_bytes(fashion.x_test[i]), headers)
                 == classes[fashion.y_test[i]])
    image = tmp_path / f"fashion-test-{index}.png"
    image.write_bytes(png_bytes(fashion.x_test[index]))
    choose_file(browser, image)
    result = latest_result(browser)
    assert result.find_element(By.CSS_SELECTOR, ".top-label").text == classes[fashion.y_test[index]]
    assert len(result.find_elements(By.CSS_SELECTOR, ".bar")) == 5
    return result, classes, index


def test_the_page_classifies_real_images_and_shows_readable_errors(browser, shipped_server, fashion, cifar_folder,
                                                                   tmp_path):
    browser.get(shipped_server.url + "/")
    wait_for(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3, "models did not load")
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "card-version"), "v"),
             "the model card did not load")
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "fashion_mnist"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")) == 10

    # 1. A real Fashion-MNIST test image the model gets right: its true label is shown, with bars.
    result, classes, index = classify_a_test_image_it_gets_right(browser, shipped_server, fashion, tmp_path)
    seen = result.find_element(By.CSS_SELECTOR, ".as-seen img")
    assert browser.execute_script("return arguments[0].naturalWidth", seen) == 28
    # The 90% prediction set (the page's default) and how like the training data the image is.
    prediction_set = result.find_element(By.CSS_SELECTOR, ".prediction-set").text
    assert prediction_set.startswith("90% set (per class): ") and classes[fashion.y_test[index]] in prediction_set
    assert "training data (p = " in result.find_element(By.CSS_SELECTOR, ".ood").text
    screenshot(browser, "page-fashion-mnist")

    # 2. Switch to CIFAR-10: the card follows, and a real test JPEG gets its true class.
    Select(browser.find_element(By.ID, "model")).select_by_value("cifar10")
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "card-title"), "cifar10"),
             "the card did not switch")
    jpegs = sorted((cifar_folder / "test").glob("*/*.jpg"))[::97]
    jpeg = next(p for p in jpegs if served_top1(shipped_server, "cifar10", p.read_bytes()) == p.parent.name)
    choose_file(browser, jpeg)
    result = latest_result(browser)
    assert result.find_element(By.CSS_SELECTOR, ".top-label").text == jpeg.parent.name
    seen = result.find_element(By.CSS_SELECTOR, ".as-seen img")
    assert browser.execute_script("return arguments[0].naturalWidth", seen) == 32
    images = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    wait_for(browser, lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images),
             "the card's plots did not load")
    history_rows = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert len(history_rows) == len((ROOT / "models" / "cifar10" / "history.jsonl").read_text().splitlines())
    screenshot(browser, "page-cifar10")

    # 3. A text file: a readable error in place of an answer, and the page keeps working.
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    choose_file(browser, text)
    result = latest_result(browser)
    error = result.find_element(By.CSS_SELECTOR, ".error").text
    assert "not an image" in error or "image" in error.lower(), error
    assert "{" not in error, "the message, not the JSON, is shown"
    shot = screenshot(browser, "page-error")
    assert shot.stat().st_size > 10_000
    assert not browser.find_element(By.ID, "page-error").is_displayed()

    # 4. A file over the upload limit: the limit is named, whether the server's 413 arrives or the upload is cut.
    limit = int(os.environ.get("MAX_UPLOAD_BYTES", 10 * 1024 * 1024))
    large = tmp_path / "huge.png"
    large.write_bytes(png_bytes(fashion.x_test[0]) + os.urandom(limit + 1024))
    choose_file(browser, large)
    error = latest_result(browser).find_element(By.CSS_SELECTOR, ".error").text
    assert "limit" in error, error


def policy_violations(browser) -> list[str]:
    """Console messages of content the page's Content-Security-Policy refused, since the last call."""
    return [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]


def test_the_page_and_the_api_docs_work_under_their_content_security_policy(browser, shipped_server):
    for path in ("/", "/docs/"):
        headers = requests.get(shipped_server.url + path, timeout=10).headers
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
    policy_violations(browser)  # start afresh
    browser.get(shipped_server.url + "/docs/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 20,
             "Swagger UI did not render the operations")
    screenshot(browser, "api-docs")
    browser.get(shipped_server.url + "/")
    wait_for(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3, "models did not load")
    assert policy_violations(browser) == []


QUEUE_TOKEN = "page-queue-token-0123456789"


@pytest.fixture(scope="module")
def labeling_server(tmp_path_factory):
    from tests.conftest import SHIPPED_MODELS, GunicornServer

    server = GunicornServer(SHIPPED_MODELS, workers=1, FEEDBACK_TOKEN=QUEUE_TOKEN, RETAIN_PREDICTIONS="1",
                            FEEDBACK_DIR=str(tmp_path_factory.mktemp("page-queue"))).start()
    yield server
    server.stop()


def test_the_label_view_shows_the_queue_and_one_click_sends_a_label(browser, labeling_server, fashion, mnist):
    server = labeling_server
    unsure = []
    for i in range(200):  # real test images until a few get a set of more than one label
        answer = requests.post(server.url + "/predict", params={"coverage": "0.9"}, timeout=10,
                               files={"image": ("x.png", png_bytes(fashion.x_test[i]))}).json()["predictions"][0]
        if len(answer["prediction_set"]["labels"]) > 1:
            unsure.append(answer["id"])
        if len(unsure) == 3:
            break
    for digit in mnist.x_test[:3]:
        requests.post(server.url + "/predict", files={"image": ("d.png", png_bytes(digit))}, timeout=10)
    browser.get(server.url + "/")
    wait_for(browser, lambda d: len(Select(d.find_element(By.ID, "model")).options) == 3, "models did not load")

    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "load-queue").click()
    wait_for(browser, expected_conditions.visibility_of_element_located((By.ID, "queue-error")),
             "a wrong token showed no error")
    assert "FEEDBACK_TOKEN" in browser.find_element(By.ID, "queue-error").text

    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(QUEUE_TOKEN)
    browser.find_element(By.ID, "load-queue").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#queue > li")) >= 6, "the queue did not load")
    items = browser.find_elements(By.CSS_SELECTOR, "#queue > li")
    marked = [bool(item.find_elements(By.CSS_SELECTOR, ".unsure")) for item in items]
    assert marked[0] and marked == sorted(marked, reverse=True), "unsure images come first"
    assert set(unsure) <= {item.get_attribute("data-id") for item, flag in zip(items, marked) if flag}
    first = items[0]
    assert "90% set (per class): " in first.text
    seen = first.find_element(By.CSS_SELECTOR, ".as-seen img")
    assert browser.execute_script("return arguments[0].naturalWidth", seen) == 28
    buttons = first.find_elements(By.CSS_SELECTOR, ".label-button")
    assert len(buttons) == 10
    label = buttons[0].text  # the set's most probable label comes first
    buttons[0].click()
    wait_for(browser, lambda d: first.find_elements(By.CSS_SELECTOR, ".labeled-as"), "the label was not sent")
    assert first.find_element(By.CSS_SELECTOR, ".labeled-as").text == f"labeled {label}"
    screenshot(browser, "page-label-view")
    stats = requests.get(server.url + "/feedback/stats", params={"model": "fashion_mnist"}, timeout=10).json()
    assert stats["models"][0]["items"] == 1
    queue = requests.get(server.url + "/feedback/queue", headers={"Authorization": f"Bearer {QUEUE_TOKEN}"},
                         timeout=10).json()["items"]
    assert first.get_attribute("data-id") not in {item["id"] for item in queue}
    assert policy_violations(browser) == []


# --- a server with API keys on --------------------------------------------------------------------------------

KEY_STORAGE = "image-classifier.api-key"  # the page's sessionStorage item (static/app.js)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """API keys on, and feedback with retained predictions, so the label view's token meets the key; yields the
    server and each key's name -> key."""
    from tests.conftest import API_KEYS_SECRET, SHIPPED_MODELS, GunicornServer, write_api_keys

    folder = tmp_path_factory.mktemp("page-keys")
    keys = write_api_keys(folder / "keys.json", alice={}, narrow={"models": ("cifar10",)})
    server = GunicornServer(SHIPPED_MODELS, workers=1, API_KEYS_FILE=str(folder / "keys.json"),
                            API_KEYS_SECRET=API_KEYS_SECRET, FEEDBACK_TOKEN=QUEUE_TOKEN, RETAIN_PREDICTIONS="1",
                            FEEDBACK_DIR=str(folder / "feedback")).start()
    yield server, keys
    server.stop()


def model_options(browser) -> list[str]:
    return [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "model")).options]


def submit_key(browser, key: str) -> None:
    field = browser.find_element(By.ID, "api-key-input")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.ID, "api-key-submit").click()


def test_the_page_asks_for_an_api_key_refuses_a_wrong_one_and_classifies_with_the_right_one(
        browser, keyed_server, fashion, tmp_path):
    server, keys = keyed_server
    policy_violations(browser)  # start afresh
    browser.get(server.url + "/")

    # 1. No key yet: the page asks for one, in a labeled password field that has the focus.
    prompt = wait_for(browser, expected_conditions.visibility_of_element_located((By.ID, "api-key")),
                      "the page did not ask for an API key")
    message = browser.find_element(By.ID, "api-key-message")
    assert "needs an API key" in message.text and message.get_attribute("role") == "alert"
    field = browser.find_element(By.ID, "api-key-input")
    assert field.get_attribute("type") == "password" and field.accessible_name == "API key"
    assert browser.switch_to.active_element == field
    assert model_options(browser) == [] and not browser.find_element(By.ID, "page-error").is_displayed()
    screenshot(browser, "page-api-key-prompt")

    # 2. A wrong key: refused with the server's reason, and not kept.
    submit_key(browser, "ick_000000000000_" + "A" * 43)
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "api-key-message"), "refused"),
             "a wrong key was not refused")
    assert "not valid" in message.text and "{" not in message.text, message.text
    assert prompt.is_displayed() and model_options(browser) == []
    assert browser.execute_script("return sessionStorage.getItem(arguments[0])", KEY_STORAGE) is None
    screenshot(browser, "page-api-key-refused")

    # 3. The right key: the models and the card load, the plots too (fetched with the key), and the key is kept
    # for this tab only.
    submit_key(browser, keys["alice"])
    wait_for(browser, lambda d: len(model_options(d)) == 3, "models did not load with the right key")
    assert not prompt.is_displayed()
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "card-version"), "v"),
             "the model card did not load")
    plots = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    wait_for(browser, lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in plots),
             "the card's plots did not load")
    assert browser.execute_script("return sessionStorage.getItem(arguments[0])", KEY_STORAGE) == keys["alice"]
    assert browser.execute_script("return localStorage.length") == 0

    # 4. A real Fashion-MNIST test image the model gets right is classified through the page.
    result, _, _ = classify_a_test_image_it_gets_right(browser, server, fashion, tmp_path,
                                                         {"X-API-Key": keys["alice"]})
    screenshot(browser, "page-api-key-classified")

    # 5. The label view's feedback token travels beside the key: the queue loads and one click labels.
    browser.find_element(By.ID, "token").send_keys(QUEUE_TOKEN)
    browser.find_element(By.ID, "load-queue").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#queue > li"), "the queue did not load")
    first = browser.find_element(By.CSS_SELECTOR, "#queue > li")
    first.find_element(By.CSS_SELECTOR, ".label-button").click()
    wait_for(browser, lambda d: first.find_elements(By.CSS_SELECTOR, ".labeled-as"), "the label was not sent")

    # 6. The key lasts the tab's session; a key for one model gets a page of that model alone.
    browser.execute_script("sessionStorage.setItem(arguments[0], arguments[1])", KEY_STORAGE, keys["narrow"])
    browser.refresh()
    wait_for(browser, lambda d: model_options(d) == ["cifar10"], "a narrow key's page did not list its one model")
    wait_for(browser, expected_conditions.text_to_be_present_in_element((By.ID, "card-title"), "cifar10"),
             "the card did not show the key's model")
    assert not browser.find_element(By.ID, "api-key").is_displayed()
    assert not browser.find_element(By.ID, "page-error").is_displayed()
    assert policy_violations(browser) == []


def test_the_card_shows_a_version_on_trial_and_the_history_its_decision(browser, tmp_path, fashion):
    from contract.layout import append_history, point_candidate, point_current
    from tests.conftest import SHIPPED_MODELS, GunicornServer

    models_dir = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "fashion_mnist", models_dir / "fashion_mnist")
    point_current(models_dir, "fashion_mnist", 5)
    point_candidate(models_dir, "fashion_mnist", 6)
    append_history(models_dir, "fashion_mnist", {"event": "trial", "outcome": "rejected", "version": 4,
                                                 "promoted": False, "reason": "rejected on live evidence: test"})
    server = GunicornServer(models_dir, workers=1, CANARY_PERCENT="10").start()
    try:
        requests.post(server.url + "/predict", timeout=30, files=[
            ("image", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(fashion.x_test[:20])])
        browser.get(server.url + "/")
        # One worker, which counts what it has shadowed before it answers /models/<name>: all 20 images.
        text = wait_for(browser, lambda d: d.find_elements(By.ID, "card-trial"), "no trial shown")[0].text
        assert text.startswith("v6: 20 live images shadowed, top-1 agreement ")
        assert text.endswith("answering 10% of inputs as the canary")
        rows = browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
        assert "rejected on live evidence: test" in rows[0].text
        screenshot(browser, "trial")
    finally:
        server.stop()
