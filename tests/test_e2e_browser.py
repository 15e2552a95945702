"""End to end: the Voila app in Debian's Chromium (Playwright), checked against the toolbox's numbers.

Voila serves notebooks/app.ipynb on the cached Fermi-Hubbard demo; Chromium clicks test points in
the main view; the detail, gallery, uncertainty and extrapolation panels must then show that point,
with the numbers that ``HessianToolbox`` gives directly. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, require_chromium

import hessview.app.cli as cli

pytestmark = pytest.mark.browser

DEMO = os.environ.get("HESSVIEW_DEMO", "fermi-hubbard")  # the app notebook serves this one
K = 5  # the explorer's default
N_RESAMPLES = 200  # the explorer's default

require_chromium()

# Every panel reports the test index it shows; true once they all show ``index``.
ALL_PANELS_SHOW = """(index) => {
  const shown = (selector) => Array.from(document.querySelectorAll(selector))
      .filter((el) => el.offsetParent !== null)
      .map((el) => el.getAttribute('data-test-index'));
  const groups = ['.hv-detail [data-test-index]', '.hv-uncertainty [data-test-index]',
                  '.hv-extrapolation [data-test-index]', '.hv-gallery [data-test-index]'];
  return groups.every((g) => {
    const s = shown(g);
    return s.length > 0 && s.every((v) => v === String(index));
  });
}"""

READ_PANELS = """() => {
  const visible = (selector) => Array.from(document.querySelectorAll(selector))
      .filter((el) => el.offsetParent !== null);
  return {
    detail: document.querySelector('.hv-detail').innerText,
    gallery: visible('.hv-gallery [data-train-index]').map((el) => ({
        role: el.dataset.role, train: Number(el.dataset.trainIndex), score: Number(el.dataset.score),
        text: el.innerText})),
    rows: visible('.hv-uncertainty tr[data-mean]').map((el) => ({
        mean: Number(el.dataset.mean), std: Number(el.dataset.std),
        lower: Number(el.dataset.lower), upper: Number(el.dataset.upper), text: el.innerText})),
    badge: (() => { const b = document.querySelector('.hv-extrapolation .hv-badge');
        return {flag: b.dataset.flag, score: Number(b.dataset.score), text: b.innerText}; })(),
    status: document.querySelector('.hv-status').innerText,
  };
}"""

# Indices of the main view's dots whose centre is not covered by another dot (safe to click).
CLICKABLE_DOTS = """() => {
  const dots = Array.from(document.querySelectorAll('.hv-main path.dot'));
  return dots.map((dot, i) => {
    const r = dot.getBoundingClientRect();
    const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
    return top === dot ? i : -1;
  }).filter((i) => i >= 0);
}"""


@pytest.fixture(scope="module")
def demo(request):
    if DEMO == "fermi-hubbard":  # built once per session, its (true) warnings asserted there
        return request.getfixturevalue("fermi_hubbard_demo")
    from hessview.app.demos import load_demo

    return load_demo(DEMO, progress=False)


@pytest.fixture(scope="module")
def truth(demo):
    tb = demo.toolbox
    return {
        "influence": tb.influence(demo.X_test, measurement="margin"),  # the explorer's default
        "uncertainty": tb.uncertainty(demo.X_test, demo.y_test, n_resamples=N_RESAMPLES, seed=0),
        "extrapolation": tb.extrapolation(demo.X_test),
    }


def wait_for_http(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"Voila exited with status {server.returncode}")
        try:
            urllib.request.urlopen(url + "voila/static/", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the server answers
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"Voila did not start serving {url} within {timeout} s")


@pytest.fixture(scope="module")
def app_url(demo, tmp_path_factory):
    port = cli.free_port(19866)
    log = (tmp_path_factory.mktemp("voila") / "voila.log").open("w")
    server = subprocess.Popen(
        cli.voila_command(cli.app_notebook(), port, open_browser=False),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=dict(
            os.environ,
            HESSVIEW_DEMO=DEMO,
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        ),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(app_url, tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1700},
        )
        page = context.new_page()
        page.goto(app_url, timeout=180_000)
        page.wait_for_selector(".hv-main path.dot", timeout=180_000)
        page.wait_for_selector(".hv-opening [data-test-index]", timeout=60_000)
        first = int(page.locator(".hv-opening [data-test-index]").get_attribute("data-test-index"))
        page.wait_for_function(ALL_PANELS_SHOW, arg=first, timeout=60_000)
        yield page
        context.close()


def expected_top(row: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    ranked = sorted(range(row.size), key=lambda j: -row[j])
    return [j for j in ranked if row[j] > 0][:k], [j for j in reversed(ranked) if row[j] < 0][:k]


def opening_index(demo) -> int:
    """Ground truth of the opening view: the test point whose two class probabilities are closest."""
    p = np.sort(np.asarray(demo.toolbox.predict(demo.X_test)), axis=1)
    return int(np.argmin(p[:, -1] - p[:, -2]))


def test_main_view_shows_every_test_point(page, demo):
    assert page.locator(".hv-main path.dot").count() == len(demo.X_test)
    opening = opening_index(demo)
    assert f"Test point #{opening}" in page.locator(".hv-detail").inner_text()
    assert "nearest the decision boundary" in page.locator(".hv-opening").inner_text()


def test_click_updates_every_panel_to_the_clicked_point(page, demo, truth):
    clickable = page.evaluate(CLICKABLE_DOTS)
    flags = truth["extrapolation"].flag
    # one flagged and one unflagged point when both exist, never the point already shown
    opened = opening_index(demo)
    chosen = [next((i for i in clickable if flags[i] == f and i != opened), None) for f in (True, False)]
    chosen = [i for i in chosen if i is not None]
    assert chosen, "no test point can be clicked without hitting another"
    ARTIFACTS.mkdir(exist_ok=True)
    for i in chosen:
        page.locator(".hv-main path.dot").nth(i).click()
        page.wait_for_function(ALL_PANELS_SHOW, arg=i, timeout=30_000)
        shown = page.evaluate(READ_PANELS)
        page.screenshot(path=str(ARTIFACTS / f"e2e-explorer-{DEMO}-test-{i}.png"), full_page=True)

        assert f"Test point #{i}" in shown["detail"]
        assert "Could not" not in shown["status"]
        influence = truth["influence"][i]
        helpful, harmful = expected_top(influence, K)
        assert [g["train"] for g in shown["gallery"] if g["role"] == "helpful"] == helpful
        assert [g["train"] for g in shown["gallery"] if g["role"] == "harmful"] == harmful
        for g in shown["gallery"]:
            assert g["score"] == pytest.approx(influence[g["train"]], rel=1e-12)
            assert f"#{g['train']}" in g["text"]
        unc = truth["uncertainty"]
        for c, row in enumerate(shown["rows"]):
            assert row["mean"] == pytest.approx(unc.mean[i, c], rel=1e-9, abs=1e-15)
            assert row["lower"] == pytest.approx(unc.lower[i, c], rel=1e-9, abs=1e-15)
            assert row["upper"] == pytest.approx(unc.upper[i, c], rel=1e-9, abs=1e-15)
            assert f"{unc.mean[i, c]:.3f}" in row["text"]
        assert len(shown["rows"]) == unc.mean.shape[1]
        ext = truth["extrapolation"]
        assert shown["badge"]["flag"] == str(bool(ext.flag[i])).lower()
        assert shown["badge"]["score"] == pytest.approx(ext.score[i], rel=1e-9)
        assert ("EXTRAPOLATION" in shown["badge"]["text"]) == bool(ext.flag[i])


def test_next_button_moves_right_along_the_control_parameter(page, demo):
    current = int(page.locator(".hv-detail [data-test-index]").get_attribute("data-test-index"))
    order = np.argsort(np.asarray(demo.x), kind="stable").tolist()
    position = order.index(current)
    if position == len(order) - 1:
        page.get_by_role("button", name="previous").click()
        expected = order[position - 1]
    else:
        page.get_by_role("button", name="next").click()
        expected = order[position + 1]
    page.wait_for_function(ALL_PANELS_SHOW, arg=expected, timeout=30_000)


DENSITY_CARDS = """() => Array.from(document.querySelectorAll('.hv-gallery .hv-card'))
    .filter((card) => card.offsetParent !== null)
    .map((card) => {
      const svg = card.querySelector('svg.hv-density');
      const caption = card.querySelector('[data-train-index]');
      return {train: Number(caption.dataset.trainIndex), text: caption.innerText,
              density: svg ? svg.dataset.density.split(' ').map(Number) : null,
              order: svg ? Number(svg.dataset.order) : null,
              line: card.querySelector('svg.hv-line') !== null};
    })"""


@pytest.mark.skipif(
    not DEMO.startswith("fermi-hubbard"), reason="the density gallery is the Fermi-Hubbard demos'"
)
def test_fermi_hubbard_gallery_draws_density_profiles_and_amplitudes_on_demand(page, demo):
    from hessview.datasets import fermi_hubbard_split

    train = fermi_hubbard_split("train", progress=False)  # the ground truth: densities from the ED data
    cards = page.evaluate(DENSITY_CARDS)
    assert cards
    for card in cards:
        np.testing.assert_allclose(card["density"], train.density[card["train"]], rtol=1e-9, atol=1e-12)
        assert card["order"] == pytest.approx(train.order_parameter[card["train"]], rel=1e-6, abs=1e-12)
        assert f"V1/J = {demo.train_x[card['train']]:.4g}" in card["text"]
        assert ("CDW-I" if train.y[card["train"]] == 1 else "LL") in card["text"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".hv-gallery").screenshot(path=str(ARTIFACTS / f"e2e-gallery-{DEMO}-density.png"))
    page.locator(".hv-thumbnail-toggle button", has_text="amplitudes").click()
    page.wait_for_function("() => document.querySelectorAll('.hv-gallery svg.hv-density').length === 0")
    assert all(card["line"] and card["density"] is None for card in page.evaluate(DENSITY_CARDS))
    page.locator(".hv-gallery").screenshot(path=str(ARTIFACTS / f"e2e-gallery-{DEMO}-amplitudes.png"))
    page.locator(".hv-thumbnail-toggle button", has_text="density").click()
    page.wait_for_function("() => document.querySelectorAll('.hv-gallery svg.hv-density').length > 0")
