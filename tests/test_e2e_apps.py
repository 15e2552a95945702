"""End to end in Debian's Chromium: the opening view, your own model as an app, the landscape app.

Each app is started the way a user starts it (``hessview app --toolbox ... --model ...`` from the
folder holding the user's module; ``hessview app landscape --quick``) on tiny models and caches built
in the fixtures. Screenshots at 1280 x 800 go to test-artifacts/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, require_chromium

import hessview.app.cli as cli

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 800}

require_chromium()

# Every explorer panel reports the test index it shows; true once they all show ``index``.
ALL_PANELS_SHOW = """(index) => {
  const shown = (selector) => Array.from(document.querySelectorAll(selector))
      .filter((el) => el.offsetParent !== null)
      .map((el) => el.getAttribute('data-test-index'));
  const groups = ['.hv-detail [data-test-index]', '.hv-uncertainty [data-test-index]',
                  '.hv-extrapolation [data-test-index]', '.hv-gallery [data-test-index]',
                  '.hv-influence [data-test-index]'];
  return groups.every((g) => {
    const s = shown(g);
    return s.length > 0 && s.every((v) => v === String(index));
  });
}"""
GALLERY = """() => Array.from(document.querySelectorAll('.hv-gallery [data-train-index]'))
    .filter((el) => el.offsetParent !== null)
    .map((el) => ({role: el.dataset.role, train: Number(el.dataset.trainIndex),
                   score: Number(el.dataset.score)}))"""
USER_MODULE = '''
from torch import nn


class Net(nn.Sequential):
    """The user's own classifier: two inputs, six tanh units, two classes."""

    def __init__(self):
        super().__init__(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))
'''


def serve(argv: list[str], *, cwd: Path, env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``hessview ARGV`` (the CLI module) and return the server and its address once it answers."""
    port = cli.free_port(19900)
    handle = log.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "hessview.app.cli", *argv, "--no-browser", "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])),
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"hessview app exited with status {server.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url + "voila/static/", timeout=2)
            return server, url
        except urllib.error.HTTPError:
            return server, url
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise TimeoutError(f"the app did not answer at {url}:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
        )
        yield context
        context.close()


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A user's folder: their module ``mynet.py``, a trained ``Net``, its saved toolbox and test set."""
    import torch

    from hessview import HessianToolbox
    from hessview.app.example_model import example_data
    from hessview.models import train

    folder = tmp_path_factory.mktemp("user")
    (folder / "mynet.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(folder))
    try:
        from mynet import Net
    finally:
        sys.path.remove(str(folder))
    X_train, y_train, g_train, X_test, y_test, g_test = example_data()
    model = Net()
    train(model, X_train, y_train, weight_decay=1e-2, epochs=200, lbfgs_steps=300, progress=False)
    tb = HessianToolbox(  # trained to a minimum: any hessview warning here fails the test
        model, torch.as_tensor(X_train), torch.as_tensor(y_train), weight_decay=1e-2, progress=False
    ).fit()
    tb.save(folder / "toolbox.safetensors")
    np.savez(
        folder / "test.npz",
        X_test=X_test,
        y_test=y_test,
        x=g_test,
        train_x=g_train,
        x_label=np.array("g"),
        class_names=np.array(["disordered", "ordered"]),
        title=np.array("My own model"),
    )
    cache = tmp_path_factory.mktemp("own-cache")
    server, url = serve(
        ["app", "--toolbox", "toolbox.safetensors", "--model", "mynet:Net", "--data", "test.npz"],
        cwd=folder,
        env=dict(os.environ, HESSVIEW_CACHE_DIR=str(cache)),
        log=folder / "app.log",
    )
    try:
        yield {"url": url, "tb": tb, "X_test": X_test}
    finally:
        stop(server)


def test_own_model_app_opens_on_the_point_nearest_the_decision_boundary(browser, own_model):
    page = browser.new_page()
    page.goto(own_model["url"], timeout=180_000)
    page.wait_for_selector(".hv-opening [data-test-index]", timeout=180_000)
    tb, X_test = own_model["tb"], own_model["X_test"]
    p = np.asarray(tb.predict(X_test))
    expected = int(np.argmin(np.abs(p[:, 1] - p[:, 0])))  # the ground truth of "most informative"
    page.wait_for_function(ALL_PANELS_SHOW, arg=expected, timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".hv-explorer").evaluate("(el) => el.scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "e2e-own-model-opening.png"))
    opening = page.locator(".hv-opening").inner_text()
    assert f"test point #{expected}" in opening and "nearest the decision boundary" in opening
    assert f"Test point #{expected}" in page.locator(".hv-detail").inner_text()
    assert "My own model" in page.content()
    # the gallery shows the toolbox's margin influence, most helpful and most harmful first
    influence = tb.influence(X_test, measurement="margin")[expected]
    shown = page.evaluate(GALLERY)
    ranked = np.argsort(-influence, kind="stable")
    helpful = [int(j) for j in ranked if influence[j] > 0][:5]
    assert [g["train"] for g in shown if g["role"] == "helpful"] == helpful
    for g in shown:
        assert g["score"] == pytest.approx(influence[g["train"]], rel=1e-9)
    # plain words, with the strongest training point's effect in numbers
    strongest = int(np.argmax(np.abs(influence)))
    sentence = page.locator(".hv-influence .hv-explain-example").inner_text()
    verb = "lower" if influence[strongest] > 0 else "raise"
    assert f"Removing training point #{strongest}" in sentence
    assert f"would {verb} the margin of the predicted label" in sentence
    assert f"by {abs(influence[strongest]):.2g}" in sentence
    assert "log scale" in page.locator(".hv-influence").inner_text()  # as the main view's g axis
    # "How to read this" opens on a click
    page.get_by_text("How to read this").click()
    page.wait_for_selector(".hv-howto li", state="visible", timeout=30_000)
    assert page.locator(".hv-howto li").count() == 5
    page.screenshot(path=str(ARTIFACTS / "e2e-own-model-how-to-read.png"))
    page.close()


def test_own_model_app_follows_a_click(browser, own_model):
    page = browser.new_page()
    page.goto(own_model["url"], timeout=180_000)
    page.wait_for_selector(".hv-opening [data-test-index]", timeout=180_000)
    opened = int(page.locator(".hv-opening [data-test-index]").get_attribute("data-test-index"))
    page.wait_for_function(ALL_PANELS_SHOW, arg=opened, timeout=60_000)
    target = 0 if opened != 0 else 1
    page.locator(".hv-main path.dot").nth(target).click()
    page.wait_for_function(ALL_PANELS_SHOW, arg=target, timeout=30_000)
    page.locator(".hv-influence").evaluate("(el) => el.scrollIntoView()")
    assert "Could not" not in page.locator(".hv-status").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"e2e-own-model-test-{target}.png"))
    page.close()


@pytest.fixture(scope="module")
def landscape_app(tmp_path_factory):
    from hessview.app import landscape_demo

    cache = tmp_path_factory.mktemp("landscape-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HESSVIEW_CACHE_DIR", str(cache))
        landscape_demo.build(quick=True, progress=False)  # the app then only reads these
        landscape, _ = landscape_demo.load_landscape("synthetic", quick=True, progress=False)
        minimum_ids = landscape.disconnectivity_graph(20).minimum_ids.tolist()
    server, url = serve(
        ["app", "landscape", "--quick"],
        cwd=ROOT,
        env=dict(os.environ, HESSVIEW_CACHE_DIR=str(cache)),
        log=cache / "app.log",
    )
    try:
        yield {"url": url, "minimum_ids": minimum_ids}
    finally:
        stop(server)


def test_landscape_app_serves_every_landscape_and_answers_a_click(browser, landscape_app):
    page = browser.new_page()
    page.goto(landscape_app["url"], timeout=180_000)
    page.wait_for_selector(".hv-landscape .hv-landscape-graph path.dot", timeout=180_000)
    assert page.locator(".hv-landscape").count() == 1
    for name in ("synthetic", "fermi-hubbard", "ising"):
        assert page.locator(f".hv-landscape-{name} .hv-landscape-graph").count() == 1
    assert "There was an error" not in page.content() and "Error displaying widget" not in page.content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "e2e-landscape-app.png"))
    ids = landscape_app["minimum_ids"]
    assert len(ids) >= 2
    dots = page.locator(".hv-landscape-synthetic .hv-landscape-graph path.dot")
    assert dots.count() == len(ids)
    position = len(ids) - 1
    dots.nth(position).click()
    status = page.locator(".hv-landscape-synthetic .hv-landscape-status")
    page.wait_for_function(
        "([el, text]) => el.innerText.includes(text)",
        arg=[status.element_handle(), f"minimum {ids[position]} selected"],
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "e2e-landscape-app-clicked.png"))
    page.close()
