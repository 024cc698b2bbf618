"""The built site draws the lifecycle in a real browser, with the network cut off.

The site is built as ``tasks.py test`` builds it (``mkdocs build --strict``)
into a temporary directory. Headless Chromium opens the concepts page from
disk with every host name unresolvable, so nothing can come from a CDN; a
probe script appended to a copy of the page measures the diagram once the
page has loaded and writes what it found into the DOM, which
``chromium --dump-dom`` prints. Skips, saying why, when no Chromium is
installed (``apt-get install chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from klarna_flow import PaymentState
from klarna_flow._domain.lifecycle import transition_table

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((found for name in BROWSERS if (found := shutil.which(name))), None)
NO_BROWSER = "no Chromium to open the built site in (apt-get install chromium)"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER),
]

PROBE = """
<script>
addEventListener("load", () => {
  const svg = document.querySelector(".lifecycle-figure svg");
  const found = svg === null ? null : {
    width: svg.getBoundingClientRect().width,
    height: svg.getBoundingClientRect().height,
    texts: [...svg.querySelectorAll("text")].map(t => [t.textContent, t.getBBox().width]),
  };
  const probe = document.createElement("pre");
  probe.id = "diagram-probe";
  probe.textContent = JSON.stringify({
    diagram: found,
    mermaid: document.querySelectorAll(".mermaid, script[src*=mermaid]").length,
  });
  document.body.append(probe);
});
</script>
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``tasks.py test`` builds it."""
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    completed = subprocess.run(
        [*build, "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return site_dir


def probe(site: Path, page: str) -> dict[str, Any]:
    """What the probe saw on ``page`` of the built site, opened offline in Chromium."""
    assert BROWSER is not None
    built = site / page / "index.html"
    probed = built.with_name("probe.html")  # beside it: the page's relative links hold
    probed.write_text(built.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    completed = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: no CDN can help
            "--virtual-time-budget=10000",
            "--window-size=1280,2000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    dom = completed.stdout
    start = dom.index('<pre id="diagram-probe">') + len('<pre id="diagram-probe">')
    found: dict[str, Any] = json.loads(dom[start : dom.index("</pre>", start)])
    return found


def test_the_concepts_page_draws_the_lifecycle_offline(site: Path) -> None:
    seen = probe(site, "concepts")

    diagram = seen["diagram"]
    assert diagram is not None, "no <svg> inside .lifecycle-figure on the built concepts page"
    assert diagram["width"] > 300
    assert diagram["height"] > 300
    drawn = dict(diagram["texts"])
    for state in PaymentState:
        assert drawn.get(state.value, 0) > 0, f"{state.value} is not drawn"
    for row in transition_table():
        assert drawn.get(row.trigger, 0) > 0, f"{row.trigger} is not drawn"
    assert seen["mermaid"] == 0  # nothing waits for a script from a CDN


def test_the_probe_sees_a_page_without_the_diagram(site: Path) -> None:
    seen = probe(site, "quickstart")

    assert seen == {"diagram": None, "mermaid": 0}
