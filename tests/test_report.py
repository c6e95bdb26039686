"""The run report (`raypipe report`), looked at in a real browser: a real small run (the demo
rows on the tiny CogVideoX, a rejected row, a row whose model cannot load) in a real local Ray,
its report rendered by headless Chromium (Debian's `chromium`, installed here when missing),
checked as a screenshot and as the DOM the page's script built."""

import base64
import contextlib
import html as html_lib
import importlib.resources
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raypipe.cli import main
from raypipe.report import CARDS_PER_PAGE, FAILURES_PER_PAGE, make_report, page, render_html, summarize
from raypipe.sink import metadata_table, read_metadata
from tests.conftest import REPO, write_jsonl

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
]

DEMO = [json.loads(line) for line in (REPO / "manifests" / "demo.jsonl").read_text().splitlines() if line.strip()]
EXTRA = [
    {"id": "bad-frames", "kind": "cogvideox", "prompt": "twelve frames", "num_frames": 12},  # rejected
    # Fails while generating (its model folder does not exist); its prompt tries to break the page.
    {
        "id": "broken-model",
        "kind": "cogvideox",
        "prompt": "a <b>bold</b> </script> prompt",
        "model": "/nonexistent/model/dir",
    },
]
ALL_IDS = {row["id"] for row in DEMO + EXTRA}


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium; installed with apt-get (as root, e.g. on CI) when it is missing."""
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0:
            pytest.fail(f"{CHROMIUM} is missing: install it as root (apt-get install -y chromium)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        wait_lock = ["-o", "DPkg::Lock::Timeout=300"]
        for cmd in (
            ["apt-get", *wait_lock, "update", "-q"],
            ["apt-get", *wait_lock, "install", "-y", "-q", "chromium"],
        ):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return CHROMIUM


def browse(url: str, *flags: str) -> str:
    """Run headless Chromium on `url` with a fresh profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="raypipe-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def dump_dom(path: Path, fragment: str = "") -> "RenderedPage":
    """The DOM after the page's script ran (not the HTML source)."""
    return RenderedPage(browse(path.as_uri() + fragment, "--dump-dom"))


def screenshot(path: Path, png: Path, fragment: str = "") -> np.ndarray:
    browse(path.as_uri() + fragment, f"--screenshot={png}", "--window-size=1280,1400")
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)


def colourful(pixels: np.ndarray) -> int:
    """How many pixels are strongly coloured (the tiny models' videos are coloured noise)."""
    return int(((pixels.max(-1) - pixels.min(-1)) > 60).sum())


class RenderedPage(HTMLParser):
    """What a dumped DOM shows: gallery cards, failure-table rows (cell texts), images."""

    def __init__(self, dom: str):
        super().__init__()
        self.dom = dom
        self.cards: list[str] = []  # data-id of each gallery card, in page order
        self.card_videos: dict[str, str] = {}
        self.failures: dict[str, list[str]] = {}  # id -> the texts of its row's cells
        self.images: list[str] = []
        self._row: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "card" in (a.get("class") or "").split():
            self.cards.append(a["data-id"])
            self.card_videos[a["data-id"]] = a.get("data-video", "")
        elif tag == "tr" and (a.get("id") or "").startswith("failure-"):
            self._row = self.failures.setdefault(a["data-id"], [])
        elif tag == "td" and self._row is not None:
            self._row.append("")
        elif tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data


@pytest.fixture(scope="module")
def report_run(ray_local, tmp_path_factory):
    """A real run of the demo rows plus a rejected and a failing row, and its report."""
    tmp = tmp_path_factory.mktemp("report")
    manifest = write_jsonl(tmp / "rows.jsonl", DEMO + EXTRA)
    out = tmp / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_code = main(["run", str(manifest), "--out", str(out)])
        report_code = main(["report", str(out)])
    meta = {row["id"]: row for row in read_metadata(str(out)).to_pylist()}
    return SimpleNamespace(
        out=out,
        html=out / "report.html",
        meta=meta,
        run_code=run_code,
        report_code=report_code,
        printed=printed.getvalue(),
    )


def test_report_of_a_run_renders_every_row_in_chromium(report_run, chromium, tmp_path):
    run = report_run
    assert run.run_code == 1 and run.report_code == 0
    assert f"raypipe report {run.out}" in run.printed  # `raypipe run` says how to make the report
    assert f"written to {run.html}" in run.printed
    assert set(run.meta) == ALL_IDS
    ok_ids = sorted(i for i, m in run.meta.items() if m["status"] == "ok")
    assert ok_ids == sorted(row["id"] for row in DEMO)

    page = dump_dom(run.html)
    assert sorted(page.cards) == ok_ids  # one card per ok video
    assert set(page.cards) | set(page.failures) == ALL_IDS  # every row's id is on the page
    for row_id in ALL_IDS:
        assert f">{row_id}<" in page.dom, row_id
    # Posters were made at report time and embedded: one decodable JPEG per card.
    posters = [src for src in page.images if src.startswith("data:image/jpeg;base64,")]
    assert len(posters) == len(ok_ids)
    for src in posters:
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert 16 <= max(image.size) <= 160
    # Each card plays videos/<id>.mp4, relative to the page.
    for row_id in ok_ids:
        assert page.card_videos[row_id] == f"videos/{row_id}.mp4"
        assert (run.html.parent / page.card_videos[row_id]).is_file()
    # The summary counts what the metadata holds.
    assert re.search(
        r"<td>cogvideox</td><td class=\"num\">4</td><td class=\"num\">1</td>"
        r"<td class=\"num\">1</td><td class=\"num\">6</td>",
        page.dom,
    )
    video_seconds = sum(run.meta[i]["duration_s"] for i in ok_ids)
    assert f"{video_seconds:.1f} s (" in page.dom

    # Not blank: the screenshot varies, and the posters are what colours it (the same page
    # filtered to no videos has far fewer colourful pixels).
    shot = screenshot(run.html, tmp_path / "page.png")
    assert shot.shape == (1400, 1280, 3) and shot.std() > 20
    no_videos = screenshot(run.html, tmp_path / "filtered.png", "#q=no-such-prompt")
    assert colourful(shot) > colourful(no_videos) + 10_000, (colourful(shot), colourful(no_videos))


def test_failures_table_lists_each_failed_and_rejected_row_with_its_error(report_run, chromium):
    run = report_run
    page = dump_dom(run.html)
    bad = {i: m for i, m in run.meta.items() if m["status"] != "ok"}
    assert set(page.failures) == set(bad) == {"bad-frames", "broken-model"}
    for row_id, meta in bad.items():
        cells = page.failures[row_id]  # id, kind, status, error, where, prompt
        assert cells[0] == row_id and cells[1] == "cogvideox" and cells[2] == meta["status"]
        assert cells[3].startswith(meta["error"])
        assert cells[5] == meta["prompt"]
    assert page.failures["bad-frames"][2] == "rejected"
    assert page.failures["bad-frames"][3].startswith("num_frames: must be 8k+1")
    assert page.failures["bad-frames"][4] == "rows.jsonl:5"  # where in the manifest
    assert page.failures["broken-model"][2] == "failed"
    assert "/nonexistent/model/dir" in page.failures["broken-model"][3]
    # A prompt holding markup is shown as text; it did not end the script that drew the page.
    assert page.failures["broken-model"][5] == "a <b>bold</b> </script> prompt"
    assert "<b>bold</b>" not in page.dom

    # The filter and the search work in the browser (their state is read from the #hash).
    failed_only = dump_dom(run.html, "#status=failed")
    assert failed_only.cards == [] and set(failed_only.failures) == {"broken-model"}
    forest = dump_dom(run.html, "#q=" + urllib.parse.quote("PINE forest"))
    assert forest.cards == ["demo-forest"] and forest.failures == {}


# Drives the page as a user would (hover a card, leave it, click it) and writes what happened
# into <pre id="probe">, which --dump-dom then shows. The page's own code makes the <video>.
HOVER_PROBE = """<script>
(async () => {
  const card = document.getElementById("card-demo-wide");
  card.dispatchEvent(new MouseEvent("mouseenter"));
  const video = card.querySelector("video");
  const hover = await new Promise((resolve) => {
    video.addEventListener("playing", () => resolve("playing " + video.videoWidth + "x" + video.videoHeight));
    video.addEventListener("error", () => resolve("error " + video.error.code));
    setTimeout(() => resolve("timeout"), 8000);
  });
  card.dispatchEvent(new MouseEvent("mouseleave"));
  const afterLeave = card.querySelector("video") ? "video" : card.querySelector(".media img") ? "poster" : "none";
  card.click();
  const modal = document.getElementById("modal");
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({hover, afterLeave, modalOpen: modal.classList.contains("open"),
    modalVideo: (modal.querySelector("video") || {src: ""}).src, modalText: modal.textContent});
  document.body.append(probe);
})();
</script>"""


def test_hover_plays_the_video_and_click_opens_it(report_run, chromium):
    page = report_run.html.read_text()
    probe_page = report_run.html.with_name("hover-probe.html")  # beside the report: same relative links
    probe_page.write_text(page.replace("</body>", HOVER_PROBE + "</body>"))
    try:
        dom = browse(probe_page.as_uri(), "--virtual-time-budget=15000", "--dump-dom")
    finally:
        probe_page.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not finish"
    probe = json.loads(html_lib.unescape(found.group(1)))
    assert probe["hover"] == "playing 80x48"  # Chromium decoded videos/demo-wide.mp4 (80x48)
    assert probe["afterLeave"] == "poster"
    assert probe["modalOpen"] and probe["modalVideo"].endswith("/videos/demo-wide.mp4")
    assert "waves rolling onto rocks" in probe["modalText"] and "tiny:cogvideox" in probe["modalText"]


def test_thousands_of_rows_are_paged(report_run, chromium, tmp_path):
    """1,200 rows (every tenth failed): the page draws one page of cards and of failures."""
    template = report_run.meta["demo-cat"]
    source = report_run.out / "videos" / "demo-cat.mp4"
    out = tmp_path / "bulk"
    (out / "videos").mkdir(parents=True)
    (out / "metadata").mkdir()
    metas = []
    for i in range(1200):
        row_id = f"bulk-{i:05d}"
        failed = i % 10 == 0
        metas.append(
            {
                **template,
                "id": row_id,
                "prompt": f"prompt number {i}",
                "status": "failed" if failed else "ok",
                "error": f"RuntimeError: row {i} failed" if failed else "",
            }
        )
        if not failed:
            os.link(source, out / "videos" / f"{row_id}.mp4")
    pq.write_table(metadata_table(metas), out / "metadata" / "part-bulk.parquet")

    result = make_report(str(out))
    assert result.rows == 1200 and result.by_status["ok"] == 1080 and result.posters_missing == 0
    html = Path(result.uri)
    assert html.stat().st_size < 1200 * 4000  # small posters, not the videos

    ok_ids = sorted(m["id"] for m in metas if m["status"] == "ok")
    failed_ids = sorted(m["id"] for m in metas if m["status"] == "failed")
    first = dump_dom(html)
    assert first.cards == ok_ids[:CARDS_PER_PAGE]
    assert list(first.failures) == failed_ids[:FAILURES_PER_PAGE]
    pages = -(-len(ok_ids) // CARDS_PER_PAGE)
    assert f"page 1 of {pages} (1080 rows)" in first.dom
    third = dump_dom(html, "#page=3")
    assert third.cards == ok_ids[2 * CARDS_PER_PAGE : 3 * CARDS_PER_PAGE]
    found = dump_dom(html, "#q=" + urllib.parse.quote("number 1087"))
    assert found.cards == ["bulk-01087"] and found.failures == {}


def test_report_of_an_s3_output(report_run, chromium, tmp_path, monkeypatch):
    """An s3:// run (moto's S3 server): posters are embedded; a page kept locally links the
    videos' URIs, the default page in OUT plays videos/<id>.mp4 relative to itself."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
        fs = fsspec.filesystem("s3")
        fs.mkdir("report-bucket")
        for sub in ("metadata", "videos"):
            fs.put(str(report_run.out / sub), f"report-bucket/run/{sub}", recursive=True)
        out = "s3://report-bucket/run"

        local_html = tmp_path / "s3-report.html"
        result = make_report(out, str(local_html))
        assert result.rows == len(ALL_IDS) and result.posters_missing == 0
        page = dump_dom(local_html)
        ok_ids = sorted(row["id"] for row in DEMO)
        assert sorted(page.cards) == ok_ids
        assert set(page.cards) | set(page.failures) == ALL_IDS
        assert len([s for s in page.images if s.startswith("data:image/jpeg;base64,")]) == len(ok_ids)
        for row_id in ok_ids:
            assert page.card_videos[row_id] == f"{out}/videos/{row_id}.mp4"
            assert f">{out}/videos/{row_id}.mp4<" in page.dom  # shown, as a browser cannot play it

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["report", out]) == 0
        assert f"written to {out}/report.html" in printed.getvalue()
        remote = fs.cat("report-bucket/run/report.html").decode()
        rows = json.loads(re.search(r'id="report-rows">(.*?)</script>', remote, re.S).group(1))
        assert {r["id"]: r["video"] for r in rows if r["status"] == "ok"} == {i: f"videos/{i}.mp4" for i in ok_ids}
    finally:
        server.stop()


def test_report_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metadata rows" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_page_templates_are_package_data(tmp_path):
    """The page's template files are found through importlib.resources, every file report.html
    inlines exists, and a wheel built from the checkout carries them: the page renders from the
    unpacked wheel alone (no checkout on the path)."""
    templates = importlib.resources.files("raypipe.report").joinpath("templates")
    names = {f.name for f in templates.iterdir() if f.is_file()}
    inlined = re.findall(r"%%([\w-]+\.(?:css|js))%%", page.template("report.html"))
    assert {"report.html", "report.css", "report.js", "gallery.js", "failures.js"} <= names
    assert set(inlined) == names - {"report.html"}  # each file is inlined, none is left out

    # Build the wheel from a copy of the checkout (a build writes build/ beside its sources) with
    # the environment's setuptools: no build isolation, no network.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "raypipe", src / "raypipe", ignore=shutil.ignore_patterns("__pycache__"))
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.rsplit("/", 1)[1] for n in zf.namelist() if n.startswith("raypipe/report/templates/")}
        assert shipped == names
        zf.extractall(tmp_path / "installed")

    check = "import raypipe.report as r; print(r.__file__); print(r.render_html('OUT', [], r.summarize([])))"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}  # ahead of the editable checkout
    proc = subprocess.run(  # cwd: not the checkout, which `python -c` would put first on sys.path
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, html = proc.stdout.split("\n", 1)
    assert where.startswith(str(tmp_path / "installed"))
    assert "addSection({" in html and ".card .prompt" in html and "%%" not in html


def test_page_values_are_not_read_as_placeholders():
    """A value holding placeholder text (a run under a folder named %%ROWS%%) stays as written."""
    html = render_html("out/%%ROWS%%", [], summarize([]))
    assert "<title>raypipe report: out/%%ROWS%%</title>" in html
    assert '<script type="application/json" id="report-rows">[]</script>' in html
    with pytest.raises(KeyError, match="no value for %%OUT%%"):
        page.fill({"TITLE": "t"})


# ---- the quality scores section (quality.js) ----------------------------------------------------

QUALITY_SCORES = ("black_fraction", "frozen_fraction", "motion_score", "flicker", "sharpness", "clip_score")


def card_scores(dom: str) -> dict[str, str]:
    """id -> the text of its card's scores line."""
    found = re.findall(r'<div class="card" id="card-([^"]+)".*?<div class="scores"[^>]*>(.*?)</div>', dom, re.S)
    return {row_id: html_lib.unescape(text) for row_id, text in found}


def histogram_counts(dom: str, score: str) -> list[int]:
    block = re.search(rf'<div class="hist" id="hist-{score}">(.*?)</div></div>\s*<div class="score-axis"', dom, re.S)
    assert block, score
    return [int(n) for n in re.findall(r'data-count="(\d+)"', block.group(1))]


def test_quality_scores_on_each_card_and_a_histogram_per_score(report_run, chromium):
    run = report_run
    ok = {i: m for i, m in run.meta.items() if m["status"] == "ok"}
    page = dump_dom(run.html)
    scores = card_scores(page.dom)
    assert set(scores) == set(ok)
    for row_id, meta in ok.items():
        assert meta["black_fraction"] == 0.0 and meta["motion_score"] > 0 and meta["clip_score"] is None
        text = scores[row_id]  # e.g. "black 0.00 · frozen 0.00 · motion 0.26 · flicker 13.6 · sharpness 1579"
        assert text.startswith("black 0.00 · frozen ") and "clip" not in text  # no CLIP model configured
        assert f"motion {meta['motion_score']:.2f}" in text
        assert f"sharpness {meta['sharpness']:.0f}" in text
    # a histogram per score over the rows with a video (the failed and rejected rows have none)
    for score in QUALITY_SCORES[:-1]:
        counts = histogram_counts(page.dom, score)
        assert len(counts) == 20 and sum(counts) == len(ok), score
    assert 'id="hist-clip_score"><div class="empty">no row has this score</div>' in page.dom


def test_quality_range_filter_reads_the_hash(report_run, chromium):
    run = report_run
    ok = sorted((m["motion_score"], i) for i, m in run.meta.items() if m["status"] == "ok")
    cut = (ok[0][0] + ok[1][0]) / 2  # between the two least moving videos
    low = dump_dom(run.html, f"#motion_score=..{cut}")
    assert low.cards == [ok[0][1]]
    assert low.failures == {}  # a row without a video has no motion_score: it is not in the range
    assert sum(histogram_counts(low.dom, "motion_score")) == 1
    assert "(1 range set)" in low.dom
    high = dump_dom(run.html, f"#motion_score={cut}..&status=ok")
    assert sorted(high.cards) == sorted(i for _, i in ok[1:])
    both = dump_dom(run.html, f"#motion_score={cut}..&black_fraction=0.5..")
    assert both.cards == [] and "(2 ranges set)" in both.dom


# Clicks a histogram bar, then sets a range in the page's inputs, then clicks the clear button, writing
# the #hash and the cards after each step into <pre id="probe">.
QUALITY_PROBE = """<script>
(() => {
  const cards = () => document.querySelectorAll("#gallery .card").length;
  const steps = [];
  const bar = [...document.querySelectorAll("#hist-motion_score .bin")].find((b) => b.dataset.count !== "0");
  bar.click();
  steps.push({hash: location.hash, cards: cards(), count: Number(bar.dataset.count),
              min: document.getElementById("qmin-motion_score").value});
  const min = document.getElementById("qmin-sharpness");
  min.value = "1e9";
  min.dispatchEvent(new Event("change"));
  steps.push({hash: location.hash, cards: cards()});
  document.getElementById("clear").click();
  steps.push({hash: location.hash, cards: cards(), min: document.getElementById("qmin-sharpness").value});
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify(steps);
  document.body.append(probe);
})();
</script>"""


def test_quality_filter_inputs_and_histogram_bars_set_the_hash(report_run, chromium):
    page = report_run.html.read_text()
    probe_page = report_run.html.with_name("quality-probe.html")
    probe_page.write_text(page.replace("</body>", QUALITY_PROBE + "</body>"))
    try:
        dom = browse(probe_page.as_uri(), "--dump-dom")
    finally:
        probe_page.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not finish"
    clicked, typed, cleared = json.loads(html_lib.unescape(found.group(1)))
    ok = sum(1 for m in report_run.meta.values() if m["status"] == "ok")
    # a bar filters to its range: its videos are the cards, its low end is in the min input and the hash
    assert clicked["hash"].startswith("#motion_score=") and 1 <= clicked["count"] == clicked["cards"] <= ok
    bar_low = urllib.parse.unquote(clicked["hash"]).split("motion_score=")[1].split("..")[0]
    assert float(clicked["min"]) == float(bar_low)
    # a typed range joins it (no video is that sharp)
    assert typed["cards"] == 0 and typed["hash"].startswith(clicked["hash"] + "&sharpness=1000000000..")
    assert cleared == {"hash": "", "cards": ok, "min": ""}


class TimelineDom(HTMLParser):
    """The pool section as the page's script drew it: each bar (its lane's worker, data-start,
    data-seconds, class), the lanes, each pool's busy ratio and the throughput bins."""

    def __init__(self, dom: str):
        super().__init__()
        self.bars: dict[str, tuple[str, float, float, str]] = {}
        self.lanes: list[str] = []
        self.pools: dict[str, float | None] = {}
        self.bins: list[int] = []
        self._worker = ""
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "g" and "actor" in classes:
            self._worker = a["data-worker"]
            self.lanes.append(self._worker)
        elif tag == "rect" and "bar" in classes:
            self.bars[a["data-id"]] = (self._worker, float(a["data-start"]), float(a["data-seconds"]), a["class"])
        elif tag == "rect" and "bin" in classes:
            self.bins.append(int(a["data-videos"]))
        elif tag == "tr" and "data-pool" in a:
            self.pools[a["data-pool"]] = float(a["data-busy-ratio"]) if a["data-busy-ratio"] else None

    def handle_endtag(self, tag):
        if tag == "g":
            self._worker = ""


def test_timeline_agrees_with_the_metadata_and_the_run_summary(report_run, chromium):
    """One bar per generated row in its worker's lane, where and as long as the metadata says; the
    pool's busy ratio is the one the run printed and wrote in OUT/runs/<run_id>.json."""
    from raypipe.usage import read_run_summaries

    run = report_run
    [summary] = read_run_summaries(str(run.out))
    generated = {
        i: m for i, m in run.meta.items() if m["status"] != "rejected" and m["worker"] and m["gen_seconds"] is not None
    }
    assert set(generated) == {row["id"] for row in DEMO} | {"broken-model"}
    drawn = TimelineDom(dump_dom(run.html).dom)
    assert set(drawn.bars) == set(generated)  # one bar per video (the failed one too), none for "bad-frames"
    assert set(drawn.lanes) == {m["worker"] for m in generated.values()} == {a["worker"] for a in summary["actors"]}
    for row_id, (worker, start, seconds, classes) in drawn.bars.items():
        meta = generated[row_id]
        assert worker == meta["worker"] and f"status-{meta['status']}" in classes.split()
        assert seconds == pytest.approx(meta["gen_seconds"], abs=1e-3)
        # batch_size 1: each call is one row, its bar starts at the row's started_at (from the run's start)
        assert start == pytest.approx(meta["started_at"].timestamp() - summary["started_at"], abs=2e-3)
    for lane in drawn.lanes:  # bars of one actor never overlap: what is between them is idle time
        spans = sorted((s, s + d) for w, s, d, _ in drawn.bars.values() if w == lane)
        assert all(end <= next_start + 1e-3 for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert set(drawn.pools) == set(summary["pools"]) == {"cogvideox"}
    assert drawn.pools["cogvideox"] == pytest.approx(summary["pools"]["cogvideox"]["busy_ratio"], abs=1e-3)
    assert 0 < drawn.pools["cogvideox"] <= 1
    busy = sum(m["gen_seconds"] for m in generated.values())
    assert summary["pools"]["cogvideox"]["busy_seconds"] == pytest.approx(busy, abs=1e-4)
    assert sum(drawn.bins) == sum(m["status"] == "ok" for m in run.meta.values())  # videos finished over time
