"""The HTML report in a real headless browser (Debian's ``chromium``): it renders offline and
its plots show.

Two looks: ``--dump-dom`` of a copy of the page carrying a small probe script that writes each
image's decoded size into the DOM once the page has loaded (the report itself holds no script,
and its Content-Security-Policy forbids one, so the copy relaxes that policy for the probe
only); and a ``--screenshot`` of the report exactly as written, which must not be blank.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless browser: install Debian's chromium (apt-get install -y chromium)",
)

PROBE = """<script>
window.addEventListener('load', function () {
  var out = document.createElement('div');
  out.id = 'probe';
  document.querySelectorAll('img').forEach(function (img, i) {
    var p = document.createElement('p');
    p.className = 'probe';
    p.textContent = 'img ' + i + ' ' + img.complete + ' ' + img.naturalWidth + 'x' +
      img.naturalHeight;
    out.appendChild(p);
  });
  var h2 = document.querySelectorAll('h2').length;
  var q = document.createElement('p');
  q.className = 'probe';
  q.textContent = 'sections ' + h2 + ' width ' + document.body.scrollWidth;
  out.appendChild(q);
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def report(clone, audit, tmp_path: Path) -> Path:
    page = tmp_path / "audit.html"
    result = audit("--html", str(page))
    assert result.code == 0, result.out + result.err
    return page


def test_the_report_renders_and_its_plots_decode(report: Path, tmp_path: Path):
    html = report.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(
        html.replace(
            "default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'"
        ).replace("</body>", PROBE + "</body>"),
        encoding="utf-8",
    )
    proc = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    images = re.findall(r'<p class="probe">img (\d+) (\w+) (\d+)x(\d+)</p>', dom)
    assert len(images) == 3, dom[-3000:]  # burn-down, ε per run, subgroups of the release
    for _, complete, width, height in images:
        assert complete == "true" and int(width) > 300 and int(height) > 150
    sections = re.search(r'<p class="probe">sections (\d+) width (\d+)</p>', dom)
    assert sections is not None and int(sections.group(1)) == 7
    assert "CLEAN: no findings" in dom


def test_the_report_as_written_paints_its_plots(report: Path, tmp_path: Path):
    shot = tmp_path / "shot.png"
    proc = chromium(
        tmp_path,
        "--window-size=1280,4000",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        report.as_uri(),
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 4000)
    # plots are drawn in several strong colours; a page whose images failed shows none
    colours = image.resize((320, 1000)).getcolors(maxcolors=1 << 16) or []
    blue = sum(n for n, (r, g, b) in colours if b > 180 and r < 80 and g < 150)
    assert blue > 200, f"no plot colour painted ({blue} px)"
