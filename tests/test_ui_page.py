"""The web page at /ui as a person uses it, in a real headless Chromium against a real service.

The champion is the serving tests' (tests/champion.py: the pipeline on the first 200 MovieLens
users); the service is `bentoml serve` with one worker, so what a like changes in the next list
does not depend on sharing feedback across workers. The browser is Debian's chromium +
chromedriver, as in tests/test_ui_browser.py; without them the module is skipped and says why.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pandas as pd
import pytest
from browser import headless_chrome  # first: skips the module without Chromium
from champion import build_champion, local_settings
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from feature_repo.lake import Lake
from serving.process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60  # the first answer may wait for a worker's models; later ones take well under a second


@pytest.fixture(scope="module")
def champion(ml_small, tmp_path_factory):
    """The first 200 MovieLens users: lake, features, online store, a registered champion."""
    yield build_champion(local_settings(tmp_path_factory.mktemp("ui-home")), ml_small, max_users=200)


@pytest.fixture(scope="module")
def server(champion):
    env = {"VIDREC_HOME": str(champion.settings.home), "VIDREC_SERVE_WORKERS": "1"}
    with ServerProcess(env=env, log_path=champion.settings.home / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    driver = headless_chrome(1400, 1100)
    yield driver
    driver.quit()


def most_active_user(champion) -> str:
    counts = Lake(champion.settings.lake_dir).read_events(columns=["user_id"])["user_id"].value_counts()
    return str(counts.index[0])


def cards(driver) -> list[str]:
    """The cards' video ids in order, read in one script call (the list may be re-rendering)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#cards li.card'), c => c.dataset.videoId)"
    )


def markers(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('#cards .move'), m => m.textContent)")


def visible_text(driver, element_id: str) -> str:
    element = driver.find_element(By.ID, element_id)
    return element.text if element.is_displayed() else ""


def ask(driver, user_id: str, k: str = "10") -> None:
    for field, value in (("user", user_id), ("k", k)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "recommend").click()


def feedback_rows(home: Path) -> pd.DataFrame:
    files = sorted((home / "feedback" / "events").glob("*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame()


def screenshot(driver, name: str) -> Path:
    folder = Path(os.environ.get("VIDREC_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1400, 1500)  # the cards, the history and the experiment panel in one picture
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def test_a_viewer_likes_a_card_and_the_list_moves(browser, server, champion):
    user_id = most_active_user(champion)
    browser.get(server.url + "/ui")
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_element(By.ID, "when").get_attribute("value"))  # the script ran: time is now

    browser.find_element(By.ID, "user").send_keys(user_id[:-1] or user_id)  # a prefix: the autocomplete offers the id
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#user-options option[value='{user_id}']"))
    ask(browser, user_id, k="12")
    wait.until(lambda d: len(cards(d)) >= 10 and d.find_elements(By.CSS_SELECTOR, "#history-list li"))
    assert "events in the lake for user " + user_id in visible_text(browser, "history-summary")
    meta = visible_text(browser, "answer-meta")
    assert "variant champion" in meta and "served from" in meta and "request " in meta
    first = browser.find_element(By.CSS_SELECTOR, "#cards li.card")
    assert first.find_element(By.TAG_NAME, "h3").text  # a title from the catalog, not an empty card
    assert "from" in first.text and "why" in first.text  # sources and reason

    before = cards(browser)
    liked = before[0]
    first.find_element(By.CSS_SELECTOR, "button.like").click()
    wait.until(lambda d: cards(d) and cards(d) != before)
    after = cards(browser)
    assert liked not in after or after.index(liked) != 0, (before, after)
    moved = markers(browser)
    assert any(m == "new" or m.startswith(("up ", "down ")) for m in moved), moved
    assert "You liked" in visible_text(browser, "notice")
    assert not visible_text(browser, "banner")

    rows = feedback_rows(champion.settings.home)
    like = rows[(rows["user_id"] == user_id) & (rows["video_id"] == liked) & (rows["event_type"] == "like")]
    assert len(like) == 1, rows.tail()
    assert like["position"].iloc[0] == 1 and like["request_id"].notna().all()
    screenshot(browser, "ui.png")


def test_bad_input_is_a_readable_message(browser, server):
    browser.get(server.url + "/ui")
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_element(By.ID, "when").get_attribute("value"))

    ask(browser, "1", k="500")  # the service's 400, rendered: the field and its message
    wait.until(lambda d: visible_text(d, "banner"))
    banner = visible_text(browser, "banner")
    assert "refused (400)" in banner and "k" in banner and "less than or equal to 100" in banner, banner
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text

    ask(browser, "no-such-user-xyz")  # nobody: a sentence, and the cold-start list
    wait.until(lambda d: "has no history" in visible_text(d, "notice") and len(cards(d)) >= 10)
    assert "user 'no-such-user-xyz' has no history: showing cold-start recommendations" in visible_text(
        browser, "notice"
    )
    assert "served from cold_start" in visible_text(browser, "answer-meta")
    assert not visible_text(browser, "banner")


def test_the_page_api_refuses_bad_parameters(server, champion):
    api = server.url + "/ui/api"
    cases = [
        ("/history", {}, 400, "user_id is required"),
        ("/history", {"user_id": "1", "limit": "many"}, 400, "limit must be an integer"),
        ("/users", {"limit": "0"}, 400, "limit must be between 1 and 50"),
        ("/videos", {"ids": ",".join(str(i) for i in range(201))}, 400, "at most 200 ids"),
        ("/nothing-here", {}, 404, "no such endpoint: /ui/api/nothing-here"),
    ]
    for path, params, status, message in cases:
        response = httpx.get(api + path, params=params, timeout=30)
        assert response.status_code == status, (path, response.text)
        assert message in response.json()["error"], (path, response.text)

    videos = Lake(champion.settings.lake_dir).read_table("videos").set_index("video_id")
    known = str(videos.index[0])
    answer = httpx.get(api + "/videos", params={"ids": f"{known},no-such-video"}, timeout=30).json()
    assert answer["videos"][known]["title"] == videos.loc[known, "title"]
    assert answer["unknown"] == ["no-such-video"]


def test_the_page_works_at_a_phones_width_and_from_the_keyboard(browser, server):
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(390, 844)
    try:
        browser.get(server.url + "/ui")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: d.find_element(By.ID, "when").get_attribute("value"))
        box = browser.find_element(By.ID, "user")
        box.clear()
        box.send_keys("2", Keys.ENTER)  # the form submits from the keyboard
        wait.until(lambda d: len(cards(d)) >= 10)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is {overflow} px wider than a phone's screen"
        like = browser.find_element(By.CSS_SELECTOR, "#cards li.card button.like")
        assert like.is_displayed() and like.size["width"] > 0
    finally:
        browser.set_window_size(1400, 1100)
