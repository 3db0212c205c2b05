"""report.html in a real browser (headless Chromium) at 1,280 x 800, as a reader sees it.

No horizontal scrolling of the page (wide tables scroll inside their own box), every image decoded, the answer
(verdict lines, then what LoRA saves) on the first screen. Chromium is Debian's `chromium`; where it is missing the
tests skip, except with LORASWEEP_REQUIRE_CHROMIUM=1 (set by .ci/run, which installs it), where a skip is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from browser import Page, chromium, chromium_path
from test_analysis import build_ag_news_multi, build_alpaca, build_sst2

from analysis.report import main

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
WIDTH, HEIGHT = 1280, 800

# what the page measures about itself once loaded: overflow, images, where the answer sits
MEASURE = """(() => {
  const box = (el) => el ? el.getBoundingClientRect().toJSON() : null;
  const images = [...document.images];
  const saves = [...document.querySelectorAll('h3')].find(h => h.textContent.startsWith('What LoRA saves'));
  let savesBox = saves;
  while (savesBox && !(savesBox.classList && savesBox.classList.contains('scroll'))) {
    savesBox = savesBox.nextElementSibling;
  }
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    innerHeight: window.innerHeight,
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    verdicts: [...document.querySelectorAll('.verdicts li')].map(li => ({...box(li), text: li.innerText})),
    saves: savesBox ? {...box(savesBox), tableWidth: savesBox.querySelector('table').scrollWidth,
                       boxWidth: savesBox.clientWidth} : null,
    wideBoxes: [...document.querySelectorAll('.scroll')].filter(b => b.scrollWidth > b.clientWidth).length,
  };
})()"""


def require_chromium() -> None:
    if chromium_path() is not None:
        return
    reason = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("LORASWEEP_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"LORASWEEP_REQUIRE_CHROMIUM=1, so the browser tests must run, but {reason}")
    pytest.skip(f"{reason}; CI installs it and sets LORASWEEP_REQUIRE_CHROMIUM=1")


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    require_chromium()
    with chromium() as tab:
        yield tab


def measure(page: Page, html: Path, screenshot: Path) -> dict:
    """Open `html` at 1,280 x 800, keep a screenshot of the first screen, return what MEASURE finds."""
    page.open(html.resolve().as_uri(), WIDTH, HEIGHT)
    page.screenshot(screenshot)
    return page.evaluate(MEASURE)


@pytest.fixture(scope="module")
def three_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of the three synthetic studies of test_analysis (wide tables, 20+ figures)."""
    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{folder / 'sweeps.db'}"
    rng = np.random.default_rng(0)
    build_sst2(url, rng)
    build_alpaca(url, rng)
    build_ag_news_multi(url, rng)
    return main(["--storage", url, "--out", str(folder / "report"), "--quiet", "--no-dashboard"])["html"]


def test_report_fits_1280_pixels_and_every_image_loads(page, three_studies, tmp_path):
    seen = measure(page, three_studies, tmp_path / "first_screen.png")
    assert seen["innerWidth"] == WIDTH
    assert seen["scrollWidth"] <= seen["innerWidth"], "the page scrolls sideways: a table or image is too wide"
    assert seen["images"] >= 12 and seen["broken"] == []
    assert seen["wideBoxes"] >= 1  # the wide detail tables scroll inside their own box instead


def test_first_screen_states_the_answer(page, three_studies, tmp_path):
    seen = measure(page, three_studies, tmp_path / "first_screen.png")
    first = seen["verdicts"][0]
    assert first["top"] >= 0 and first["bottom"] <= seen["innerHeight"], first
    assert first["text"].startswith("ag_news · small ")  # tasks in alphabetical order, the first one visible
    assert len(seen["verdicts"]) == 4
    saves = seen["saves"]
    assert saves is not None and saves["tableWidth"] <= saves["boxWidth"], "what LoRA saves must fit 1,280 px"
