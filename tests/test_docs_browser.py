"""/docs in headless Chromium: Swagger UI renders every tag of /openapi.json; one Try-it-out call works."""
import shutil
from pathlib import Path

import pytest
import requests

from .servers import Gunicorn

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip("chromium or chromedriver is missing (Debian packages: chromium, chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extras)")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 15  # seconds for any one thing to appear on the page
# Root needs --no-sandbox; the rest keeps an offline Chromium from reaching out (sync, updates, QUIC).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,2400"]


@pytest.fixture
def docs_server(module_backend, tmp_path, database_settings):
    env = {"ENV": "dev", "DATA_DIR": str(tmp_path / "data"), **database_settings,
           "OLLAMA_BASE_URLS": module_backend.url, "OPENAI_API_BASE_URLS": ""}
    with Gunicorn(env, workers=1, threads=4, log_path=str(tmp_path / "gunicorn.log")) as server:
        yield server


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def operations_per_tag(spec: dict) -> dict[str, int]:
    """Tag -> how many operations of the spec carry it."""
    counts = {tag["name"]: 0 for tag in spec["tags"]}
    for path_item in spec["paths"].values():
        for operation in path_item.values():
            for tag in operation.get("tags", []) if isinstance(operation, dict) else []:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def rendered_operations_per_tag(driver) -> dict[str, int]:
    """Tag -> operations Swagger UI drew in that tag's section (it renders the whole spec at once)."""
    shown(driver, ".opblock-tag-section")
    return {section.find_element(By.CSS_SELECTOR, "h3.opblock-tag").get_attribute("data-tag"):
            len(section.find_elements(By.CSS_SELECTOR, ".opblock"))
            for section in driver.find_elements(By.CSS_SELECTOR, ".opblock-tag-section")}


def api_key(url: str) -> str:
    """The first user signs up (admin) and creates an API key through the API."""
    admin = {"name": "Admin", "email": "admin@example.com", "password": "admin-password"}
    session = requests.post(url + "/api/v1/auths/signup", json=admin, timeout=10)
    bearer = {"Authorization": f"Bearer {session.json()['token']}"}
    return requests.post(url + "/api/v1/auths/api_key", headers=bearer, timeout=10).json()["api_key"]


def shown(driver, css: str):
    return WebDriverWait(driver, WAIT).until(ready.visibility_of_element_located((By.CSS_SELECTOR, css)))


def click(driver, css: str):
    WebDriverWait(driver, WAIT).until(ready.element_to_be_clickable((By.CSS_SELECTOR, css))).click()


def authorize(driver, key: str) -> None:
    click(driver, ".scheme-container button.authorize")
    shown(driver, ".modal-ux input[aria-label='auth-bearer-value']").send_keys(key)
    click(driver, ".modal-ux .auth-btn-wrapper button.authorize")
    click(driver, ".modal-ux .auth-btn-wrapper button.btn-done")


def try_it_out(driver, method: str, path: str) -> tuple[str, str]:
    """Expand `method path`, Try it out, Execute; the rendered (status code, response body)."""
    operation = f".opblock-{method}:has(.opblock-summary-path[data-path='{path}'])"
    click(driver, f"{operation} .opblock-summary-control")
    click(driver, f"{operation} .try-out__btn")
    click(driver, f"{operation} button.execute")
    status = shown(driver, f"{operation} .live-responses-table .response .response-col_status")
    body = shown(driver, f"{operation} .live-responses-table .response-col_description pre")
    return status.text.strip(), body.text


def test_swagger_ui_renders_every_tag_and_tries_a_call_with_an_api_key(docs_server, browser, tmp_path):
    key = api_key(docs_server.url)
    assert key.startswith("sk-")
    expected = operations_per_tag(requests.get(docs_server.url + "/openapi.json", timeout=10).json())
    assert expected and all(expected.values())

    browser.get(docs_server.url + "/docs")
    assert rendered_operations_per_tag(browser) == expected

    authorize(browser, key)
    status, body = try_it_out(browser, "get", "/api/models")
    browser.save_screenshot(str(tmp_path / "docs.png"))
    assert status == "200"
    assert '"llama3.2:latest"' in body
