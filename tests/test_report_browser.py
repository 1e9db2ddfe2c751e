"""The HTML report as a reader sees it, in a real browser (Debian's headless Chromium through Selenium):
three reports (a healthy mesh, a PKI broken from the start, 5 clusters with a gateway down), at 1400x900 and
800x900. What a reader needs: the verdict and the first failure on the first screen, no sideways scrolling,
and every chip and arrow coloured as its case's verdict in conformance-report.yaml says."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.cli import main as meshfed
from meshfed.report.html import _OUTCOME_COLORS, _PAIR_COLORS
from tests.test_conformance_run import run_suite

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="needs Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`)",
    ),
]
SIZES = [(1400, 900), (800, 900)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    made = {}
    healthy = run_suite(root / "healthy", "--topology", "primary-remote")
    assert healthy.returncode == 0, healthy.stdout[-2000:]
    made["healthy"] = root / "healthy"
    assert meshfed(["pki", "init", "--out", str(root / "pki"), "--clusters", "cluster-a,cluster-b"]) == 0
    (root / "pki" / "cluster-b" / "ca-key.pem").unlink()
    broken = run_suite(root / "broken", "--cacerts-dir", str(root / "pki"))
    assert broken.returncode == 1, broken.stdout[-2000:]
    made["broken"] = root / "broken"
    five = run_suite(
        root / "five",
        "--clusters",
        "5",
        "--inject-fault",
        "eastwest-gateway-down",
        "-k",
        "reachability or load_balancing",
    )
    assert five.returncode == 1, five.stdout[-2000:]
    made["five"] = root / "five"
    return made


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)  # never downloads a driver
    yield driver
    driver.quit()


def _open(browser: Any, report: Path, size: tuple[int, int]) -> dict[str, Any]:
    browser.set_window_size(*size)
    browser.get((report / "report.html").as_uri())
    height = browser.execute_script("return window.innerHeight")
    found: dict[str, Any] = browser.execute_script(
        """
        const box = (e) => e ? e.getBoundingClientRect() : null;
        const failed = document.querySelector('.meshfed-failed');
        const colour = (e) => getComputedStyle(e).backgroundColor;
        return {
          scrollWidth: document.documentElement.scrollWidth,
          clientWidth: document.documentElement.clientWidth,
          verdictBottom: box(document.querySelector('.meshfed-verdict')).bottom,
          failedTop: failed ? box(failed).top : null,
          failedText: failed ? failed.textContent : '',
          chips: [...document.querySelectorAll('span.chip[data-case]')].map(
            e => [e.dataset.case, colour(e)]),
          arrows: [...document.querySelectorAll('line[data-pair]')].map(
            e => [e.dataset.pair, e.getAttribute('stroke')]),
          text: document.body.innerText,
          // Readability: every cell of meshfed's tables padded, its text and every line's words dark enough.
          cells: [...document.querySelectorAll('.meshfed td, .meshfed th')].map(e => {
            const style = getComputedStyle(e);
            return [parseFloat(style.paddingLeft), parseFloat(style.paddingRight), style.color];
          }),
          // Each text's colour against what it is drawn on (the nearest background that is not transparent).
          words: [...document.querySelectorAll('.meshfed .said span, .meshfed .said, .meshfed td, .meshfed p, .meshfed .chip')].map(
            e => {
              let back = e;
              while (back && ['rgba(0, 0, 0, 0)', 'transparent'].includes(colour(back))) back = back.parentElement;
              return [getComputedStyle(e).color, back ? colour(back) : 'rgb(255, 255, 255)', e.textContent];
            }),
          // The filter boxes sit right above the results they filter: nothing but space between.
          filtersBottom: box(document.querySelector('.filters')).bottom,
          resultsTop: box(document.querySelector('#results-table')).top,
          environmentTop: box(document.querySelector('#environment')).top,
        };
        """
    )
    found["height"] = height
    return found


def _rgb(hex_colour: str) -> str:
    value = hex_colour.lstrip("#")
    red, green, blue = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({red}, {green}, {blue})"


def _luminance(css: str) -> float:
    channels = [int(part) / 255 for part in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(one: str, other: str) -> float:
    """WCAG's contrast ratio of two CSS rgb() colours."""
    light, dark = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _verdicts(report: Path) -> dict[str, str]:
    document = yaml.safe_load((report / "conformance-report.yaml").read_text())
    return {case["name"]: case["outcome"] for case in document["cases"]}


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("name", ["healthy", "broken", "five"])
def test_a_reader_sees_the_verdict_and_the_first_failure_first(
    reports: dict[str, Path], browser: Any, name: str, size: tuple[int, int]
) -> None:
    page = _open(browser, reports[name], size)
    assert page["scrollWidth"] <= page["clientWidth"], f"{name} scrolls sideways at {size[0]} px"
    assert page["verdictBottom"] <= page["height"], f"{name}: the verdict is below the first screen"
    verdicts = _verdicts(reports[name])
    if name == "healthy":
        assert page["failedTop"] is None
    else:
        assert page["failedTop"] is not None and page["failedTop"] < page["height"] - 20, page["failedText"]
    if name == "five":  # a cluster case's failure is at the top too, not only the pair cases'
        assert "core failed: MeshWideLoadBalancing (cluster-a)" in page["text"]
    if name == "broken":  # what cannot happen in the topology is not a failure, broken mesh or not
        assert "extended does not apply here: MisconfigurationRegression (istiod-not-exposed, " in page["text"]
        assert {verdicts[n] for n in verdicts if n.startswith("MisconfigurationRegression[istiod-not-exposed")} == {
            "not-applicable"
        }
    assert "('/" not in page["text"], "a skipped row shows pytest's raw tuple"
    assert page["cells"] and all(left >= 4 and right >= 4 for left, right, _ in page["cells"]), "unpadded cells"
    faint = [text for colour, back, text in page["words"] if _contrast(colour, back) < 4.5]
    assert not faint, f"low-contrast text: {faint[:3]}"
    assert 0 <= page["resultsTop"] - page["filtersBottom"] < 60 < page["environmentTop"] - page["filtersBottom"]


@pytest.mark.parametrize("name", ["healthy", "five"])
def test_every_chip_and_arrow_has_its_cases_colour(reports: dict[str, Path], browser: Any, name: str) -> None:
    page = _open(browser, reports[name], SIZES[0])
    verdicts = _verdicts(reports[name])
    assert page["chips"], "no chip in the matrix"
    for case_id, colour in page["chips"]:
        assert colour == _rgb(_OUTCOME_COLORS[verdicts[case_id]]), case_id
    for pair, colour in page["arrows"]:
        mine = [outcome for case_id, outcome in verdicts.items() if case_id.endswith(f"[{pair}]")]
        expected = "failed" if "failed" in mine else "passed" if "passed" in mine else "untested"
        assert colour == _PAIR_COLORS[expected], pair
    assert len(page["arrows"]) == (20 if name == "five" else 2)
    if name == "five":
        assert {colour for _pair, colour in page["arrows"]} == {_PAIR_COLORS["passed"], _PAIR_COLORS["failed"]}
