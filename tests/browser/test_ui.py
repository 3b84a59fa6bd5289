"""The web view at /ui, as a person sees it: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against a real ``sift serve`` on the embedded default
(SQLite, local blobs, in-process worker, the builtin tiny model).

One server and one browser for the module: a text score set, a tiny evaluation and a LESS
valuation run through the API; the browser logs in with the API key, watches the valuation's
page go from queued to succeeded on its own (the page polls), then reads the ranked records
with their per-subtask scores, the histograms (loaded images), the datasets, the jobs and the
evaluation table. Dataset names, record text and a probe subtask carry HTML that would run
script if it were rendered as HTML: it must show as text and run nothing. Screenshots go to
``$SIFT_TEST_ARTIFACTS`` (else the test's tmp dir); their paths are printed.

Without Chromium the browser test skips locally with the reason, and fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.embedded import VALUATION_SETTINGS, embedded_sift

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "service" / "demo_data"
STATIC = REPO / "service" / "ui" / "static"
CHROMEDRIVER = "/usr/bin/chromedriver"

# HTML that runs script when parsed as HTML (an inline handler; a <script> element): planted in
# a dataset name, a record's prompt and response, and a probe subtask (a column header).
XSS_NAME = 'pool <img src=x onerror="window.__siftXss=1">'
XSS_PROMPT = '<img src=x onerror="window.__siftXss=2"> What is 2+2?'
XSS_RESPONSE = "<script>window.__siftXss=3</script>4"
XSS_SUBTASK = '<i>beta</i><img src=x onerror="window.__siftXss=4">'
XSS_STUDY = '<b onmouseover="window.__siftXss=6">study</b>'


def _chromium() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _browser_or_skip() -> str:
    """The Chromium binary; a skip (locally) or a failure (CI=true) when something is missing."""
    missing = []
    chromium = _chromium()
    if chromium is None:
        missing.append("chromium")
    if not Path(CHROMEDRIVER).is_file():
        missing.append(f"chromium-driver ({CHROMEDRIVER})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = (
            f"the web view test needs {', '.join(missing)}: "
            "apt-get install chromium chromium-driver (.ci/run installs them)"
        )
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert chromium is not None
    return chromium


# --- fast checks, no browser -----------------------------------------------------------------


def test_ui_files_are_served_with_a_restrictive_csp() -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app

    with TestClient(create_app()) as client:
        redirect = client.get("/ui", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"] == "ui/"
        for path, media in (
            ("/ui/", "text/html"),
            ("/ui/app.js", "javascript"),
            ("/ui/app.css", "text/css"),
        ):
            response = client.get(path)  # no API key: the files hold no data
            assert response.status_code == 200, path
            assert media in response.headers["content-type"], path
            csp = response.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["default-src"] == "'none'"
            assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no eval
            assert directives["img-src"] == "'self' blob:"
            assert directives["connect-src"] == "'self'"
            assert directives["frame-ancestors"] == "'none'"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
        assert client.get("/ui/missing.js").status_code == 404
        metrics = client.get("/metrics").text  # counted under the mount, not "unmatched"
        assert 'route="/ui/{path}",status="200"' in metrics
        assert client.get("/v1/datasets").status_code == 401  # the data still needs a key


def test_ui_sources_never_parse_data_as_html() -> None:
    """The page builds every node through DOM APIs; no HTML parsing sink appears in it, no inline
    script or handler in its HTML (the CSP would block them), and the key is never put in a URL."""
    script = (STATIC / "app.js").read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ):
        assert sink not in script, sink
    assert "new Function" not in script and 'setTimeout("' not in script
    html = (STATIC / "index.html").read_text()
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None, "inline <script>"
    assert re.search(r"\son[a-z]+\s*=", html) is None, "inline event handler"
    assert "style=" not in html
    assert "sessionStorage" in script and "localStorage" not in script
    assert re.search(r"[?&](api_?key|key|token)=", script) is None


def test_ui_files_are_package_data() -> None:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "ui/static/*" in data["package-data"]["service"]
    assert {p.name for p in STATIC.iterdir()} >= {"index.html", "app.js", "app.css"}


# --- the browser test ------------------------------------------------------------------------


def _rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DEMO / name).read_text().splitlines() if line.strip()]


def _pool() -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    pool = []
    for row in _rows("pool.jsonl"):
        task = row["metadata"]["task"]
        if seen.get(task, 0) < 4:
            seen[task] = seen.get(task, 0) + 1
            pool.append({**row, "subtask": task})
    pool.append(
        {
            "id": "hostile-1",
            "prompt": XSS_PROMPT,
            "response": XSS_RESPONSE,
            "subtask": "arithmetic",
            "metadata": {"note": '<img src=x onerror="window.__siftXss=5">'},
        }
    )
    return pool


def _probes() -> list[dict[str, Any]]:
    probes = _rows("probes.jsonl")
    return [{**p, "subtask": "alpha" if i % 2 else XSS_SUBTASK} for i, p in enumerate(probes)]


def _paired_sets() -> dict[str, list[dict[str, Any]]]:
    """A study's evaluation set Z and one probe set, paired by metadata.pair."""
    rows = [r for r in _rows("pool.jsonl") if r["metadata"]["task"] == "capital"][10:18]
    sets: dict[str, list[dict[str, Any]]] = {"study Z": [], "study probes": []}
    for i, row in enumerate(rows):
        name = "study Z" if i % 2 == 0 else "study probes"
        sets[name].append({**row, "metadata": {"pair": f"p{i // 2}"}})
    return sets


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SIFT_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _driver(chromium: str, root: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={root / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system chromedriver, by path: Selenium Manager (which downloads drivers) never runs.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(root / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


def _started(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _finished(api: httpx.Client, path: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (status := api.get(path).json()["status"]) in ("queued", "running"):
        assert time.monotonic() < deadline, f"{path} is still {status}"
        time.sleep(0.3)
    return str(status)


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def test_web_view_in_a_browser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chromium = _browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    artifacts = _artifacts(tmp_path)
    with contextlib.ExitStack() as stack:
        sift = stack.enter_context(embedded_sift(tmp_path, env={"OMP_NUM_THREADS": "1"}))
        base, key, log = sift.url, sift.api_key, sift.log
        api = stack.enter_context(sift.client())
        driver = _driver(chromium, tmp_path)
        stack.callback(driver.quit)
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)

        def text() -> str:
            return str(driver.find_element(By.TAG_NAME, "main").text)

        def xss_ran() -> Any:
            return driver.execute_script("return window.__siftXss")

        def cells(table: str) -> list[list[str]]:
            """A table's body cells as shown, read at once (the page may redraw between reads)."""
            return list(
                driver.execute_script(
                    "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
                    ".map(tr => [...tr.cells].map(td => td.innerText.trim()))",
                    table,
                )
            )

        def rendered_cleanly() -> None:
            """No value reached the page as JavaScript's placeholder for a missing one (JSON
            blocks, such as a curation's recipe, may hold a null)."""
            shown = driver.execute_script(
                "const m = document.querySelector('main').cloneNode(true);"
                "m.querySelectorAll('pre').forEach(p => p.remove()); return m.textContent"
            )
            stray = re.findall(r"\b(?:null|undefined|NaN)\b|\[object Object\]", shown)
            assert not stray, (stray, shown)

        # Log in: the key goes into a form once, then lives in sessionStorage only.
        driver.get(f"{base}/ui")
        login = wait.until(lambda d: d.find_element(By.ID, "api-key"))
        login.send_keys("sift_" + "0" * 40)  # a key the server refuses: asked again
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait.until(
            lambda d: (
                "refused"
                in d.execute_script("return document.querySelector('#login .error').textContent")
            )
        )
        assert driver.execute_script("return sessionStorage.length") == 0
        login = driver.find_element(By.ID, "api-key")
        login.clear()
        login.send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait.until(lambda d: "no jobs yet" in text())
        assert driver.execute_script("return sessionStorage.getItem('sift.apiKey')") == key
        assert key not in driver.current_url
        assert "local (admin)" in driver.find_element(By.ID, "who").text

        # The jobs, started now: the valuation queues behind the score set and the evaluation.
        pool_rows = _pool()
        pool = api.post("/v1/datasets", json={"name": XSS_NAME, "records": pool_rows})
        assert pool.status_code == 201, pool.text
        pool = pool.json()
        probes = api.post("/v1/datasets", json={"name": "probes", "records": _probes()}).json()
        model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
        model_id = model.json()["id"]
        score_set = _started(
            api, "/v1/score-sets", {"scorer": "text", "dataset_id": pool["id"], "name": "text"}
        )
        evaluation = _started(
            api,
            "/v1/evaluations",
            {
                "name": "random vs full",
                "model_id": model_id,
                "pool_dataset_id": pool["id"],
                "target_dataset_id": probes["id"],
                "budget": 4,
                "arms": [{"kind": "random", "seeds": [0]}, {"kind": "full"}],
                "settings": {
                    "max_length": 96,
                    "bootstrap": 200,
                    "training": {"epochs": 1, "learning_rate": 1e-3, "warmup_ratio": 0.0},
                },
            },
        )
        valuation = _started(
            api,
            "/v1/valuations",
            {
                "model_id": model_id,
                "pool_dataset_id": pool["id"],
                "probe_dataset_id": probes["id"],
                "settings": VALUATION_SETTINGS,
            },
        )
        vid = valuation["id"]

        # The valuation's page, opened while it waits behind the other jobs: it must reach
        # "succeeded" by polling, without a reload.
        driver.get(f"{base}/ui/#/valuations/{vid}")
        seen: list[str] = []
        deadline = time.monotonic() + 420
        while True:
            status = driver.execute_script(
                "const b = document.querySelector('.job .status'); return b ? b.textContent : ''"
            )
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            if status in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, (seen, log.read_text()[-3000:])
            time.sleep(0.2)
        assert seen[-1] == "succeeded", (seen, text(), log.read_text()[-3000:])
        assert seen[0] in ("queued", "running"), seen  # the page followed the job live
        # A strategy study on the valuation's warmup checkpoints, run while the browser reads.
        run_id = api.get(f"/v1/valuations/{vid}").json()["warmup_run_id"]
        z_id, probe_set_id = (
            api.post("/v1/datasets", json={"name": name, "records": rows}).json()["id"]
            for name, rows in _paired_sets().items()
        )
        curation = _started(
            api,
            "/v1/curations",
            {
                "name": "three at random",
                "dataset_id": pool["id"],
                "pick": {"method": "random"},
                "budget": 3,
            },
        )
        study = _started(
            api,
            "/v1/studies",
            {
                "name": XSS_STUDY,
                "warmup_run_id": run_id,
                "eval_dataset_id": z_id,
                "probe_sets": [{"name": "cot", "dataset_id": probe_set_id}],
                "settings": {"projection": {"dim": 512, "seed": 0}, "max_length": 96},
            },
        )
        page_loads = driver.execute_script(
            "return performance.getEntriesByType('navigation').length"
        )
        assert page_loads == 1

        # Ranked records: rank, score, one column per probe subtask, the record's text.
        scores = api.get(f"/v1/valuations/{vid}/scores", params={"limit": 50}).json()
        assert scores["total"] == pool["n_records"]
        wait.until(lambda d: len(cells("table.ranked")) == len(scores["items"]))
        headers = driver.execute_script(
            "return [...document.querySelectorAll('table.ranked thead th')].map(th => th.innerText)"
        )
        subtasks = sorted(scores["items"][0]["per_subtask"])
        assert subtasks == sorted(["alpha", XSS_SUBTASK])
        assert headers[:4] == ["Rank", "Score", *subtasks]  # the hostile subtask as text
        # the records' text is looked up by id: one request for the page's rows, no scan
        lookups = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => n.includes('/records?'))"
        )
        assert len(lookups) == 1, lookups
        assert lookups[0].count("record_id=") == len(scores["items"]), lookups
        by_id = {str(r["id"]): r for r in pool_rows}
        rows = cells("table.ranked")
        for row, item in zip(rows, scores["items"], strict=True):
            assert row[0] == str(item["rank"] + 1)
            assert _number(row[1]) == pytest.approx(item["score"], abs=6e-5, rel=1e-3)
            for cell, subtask in zip(row[2:4], subtasks, strict=True):
                expected = item["per_subtask"][subtask]
                assert _number(cell) == pytest.approx(expected, abs=6e-5, rel=1e-3)
            record = by_id[item["record_id"]]
            assert row[4] == record["subtask"]
            assert row[5] == record["prompt"] and row[6] == record["response"]
            assert row[7] == item["record_id"]
        hostile_rank = next(s["rank"] for s in scores["items"] if s["record_id"] == "hostile-1")
        assert rows[hostile_rank][5:7] == [XSS_PROMPT, XSS_RESPONSE]

        # The histogram, fetched with the key and shown from an object URL.
        def loaded_images(d: Any) -> list[str]:
            return list(
                d.execute_script(
                    "return [...document.querySelectorAll('figure.plot img')]"
                    ".filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)"
                )
            )

        srcs = wait.until(loaded_images)
        rendered_cleanly()
        assert all(s.startswith("blob:") for s in srcs), srcs
        assert "Score distribution" in text() and "Count" in text()
        # Nothing planted ran, and no element came from the planted HTML.
        assert xss_ran() is None
        assert (
            driver.execute_script(
                "return [...document.images].filter(i => !i.src.startsWith('blob:')).length"
            )
            == 0
        )
        driver.set_window_size(
            1400, min(4000, driver.execute_script("return document.documentElement.scrollHeight"))
        )
        shots = [artifacts / "ui-valuation.png"]
        driver.save_screenshot(str(shots[0]))
        driver.set_window_size(1400, 1000)

        # Datasets: the hostile name is a link's text; its records page shows the record.
        driver.get(f"{base}/ui/#/datasets")
        link = wait.until(lambda d: d.find_element(By.LINK_TEXT, XSS_NAME))
        listed = {a.text for a in driver.find_elements(By.CSS_SELECTOR, "table.list tbody a")}
        assert listed == {XSS_NAME, "probes", "study Z", "study probes"}
        link.click()
        wait.until(lambda d: cells("table.records"))
        assert driver.find_element(By.CSS_SELECTOR, "h1 .name").text == XSS_NAME
        assert XSS_PROMPT in text() and "window.__siftXss=5" in text()
        rendered_cleanly()
        assert xss_ran() is None and not driver.find_elements(By.CSS_SELECTOR, "main img")
        shots.append(artifacts / "ui-dataset.png")
        driver.save_screenshot(str(shots[-1]))

        # Jobs: every job's kind, name and status (once all have finished).
        statuses = {
            "valuation": _finished(api, f"/v1/valuations/{vid}"),
            "score set": _finished(api, f"/v1/score-sets/{score_set['id']}"),
            "evaluation": _finished(api, f"/v1/evaluations/{evaluation['id']}"),
            "study": _finished(api, f"/v1/studies/{study['id']}"),
            "curation": _finished(api, f"/v1/curations/{curation['id']}"),
        }
        assert statuses == dict.fromkeys(statuses, "succeeded"), log.read_text()[-3000:]
        driver.get(f"{base}/ui/#/")
        wait.until(lambda d: len(cells("table.jobs")) == 5)
        assert {tuple(row[:3]) for row in cells("table.jobs")} == {
            ("valuation", "less", "succeeded"),
            ("score set", "text", "succeeded"),
            ("evaluation", "random vs full", "succeeded"),
            ("study", XSS_STUDY, "succeeded"),
            ("curation", "three at random", "succeeded"),
        }
        shots.append(artifacts / "ui-jobs.png")
        driver.save_screenshot(str(shots[-1]))

        # The score set's columns and a histogram of one of them.
        driver.get(f"{base}/ui/#/score-sets/{score_set['id']}")
        wait.until(lambda d: cells("table.values"))
        assert wait.until(loaded_images)
        assert XSS_PROMPT in text()
        rendered_cleanly()
        shots.append(artifacts / "ui-score-set.png")
        driver.save_screenshot(str(shots[-1]))

        # The evaluation table: one row per arm and the untrained model.
        driver.get(f"{base}/ui/#/evaluations/{evaluation['id']}")
        arm_rows = wait.until(lambda d: cells("table.evaluation"))
        result = api.get(f"/v1/evaluations/{evaluation['id']}").json()["result"]
        assert [r[0].removesuffix(" (reference)") for r in arm_rows] == [
            *(a["name"] for a in result["arms"]),
            "untrained",
        ]
        for row, arm in zip(arm_rows, result["arms"], strict=False):
            assert row[2] == str(arm["n_train"])
            assert _number(row[3].split(" ")[0]) == pytest.approx(arm["loss"]["mean"], abs=6e-5)
        wait.until(loaded_images)
        rendered_cleanly()
        shots.append(artifacts / "ui-evaluation.png")
        driver.save_screenshot(str(shots[-1]))

        # The study: its verdict, its curve points and the plot; the warmup run's curve.
        driver.get(f"{base}/ui/#/studies/{study['id']}")
        verdicts = wait.until(lambda d: cells("table.verdicts"))
        result = api.get(f"/v1/studies/{study['id']}").json()["result"]
        (probe_set,) = result["probe_sets"]
        assert [row[:3] for row in verdicts] == [
            ["cot", metric, m["verdict"]["outcome"]] for metric, m in probe_set["metrics"].items()
        ]
        assert XSS_STUDY in text()
        assert len(cells("table.points")) == sum(
            len(m["points"]) for m in probe_set["metrics"].values()
        )
        wait.until(loaded_images)
        rendered_cleanly()
        shots.append(artifacts / "ui-study.png")
        driver.save_screenshot(str(shots[-1]))
        driver.get(f"{base}/ui/#/warmup-runs/{run_id}")
        wait.until(loaded_images)
        assert "Checkpoints" in text()
        rendered_cleanly()

        # The page itself broke no rule of its CSP (a violation is logged to the console).
        console = [e["message"] for e in driver.get_log("browser")]
        assert not [m for m in console if "Content Security Policy" in m], console
        assert xss_ran() is None

        # The curation's picks, and every list page.
        driver.get(f"{base}/ui/#/curations/{curation['id']}")
        picked = wait.until(lambda d: cells("table.picked"))
        record_ids = api.get(f"/v1/curations/{curation['id']}").json()["record_ids"]
        assert [row[1] for row in picked] == record_ids and len(record_ids) == 3
        rendered_cleanly()
        for view, n in (
            ("valuations", 1),
            ("score-sets", 1),
            ("studies", 1),
            ("curations", 1),
            ("evaluations", 1),
            ("datasets", 4),
        ):
            driver.get(f"{base}/ui/#/{view}")
            wait.until(lambda d, n=n: len(cells("table.list")) == n)
            rendered_cleanly()

        # "Forget key" drops it from the tab and asks for one again.
        driver.find_element(By.ID, "forget").click()
        wait.until(lambda d: d.find_element(By.ID, "api-key"))
        assert driver.execute_script("return sessionStorage.getItem('sift.apiKey')") is None

    with capsys.disabled():
        print(f"\nweb view screenshots: {', '.join(map(str, shots))}")
        print(f"valuation page, statuses seen without a reload: {' -> '.join(seen)}")
        print(f"web view test: {time.monotonic() - started:.1f} s")
