#!/usr/bin/env python3
"""The dashboard in a real browser: Debian's chromium, driven by selenium
through Debian's chromium-driver (registry/tests/it/browser.rs runs this
against a server it started, with the tiny stack).

As the admin: sign in, create a project with a quota, see a pushed image's
tags and pull line, start a build and watch its log arrive live to its end,
see the built image marked outdated once the run image changes, run a fleet
rebase from the Fleet page (a dry run first) and see the image current;
reach a page with the keyboard alone; on a phone's screen, no page is wider
than the screen. A screenshot of each page goes to --artifacts.

Exits 0 when every step held; otherwise prints the step and why, and exits 1.
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--source", required=True, help="git repository the build takes")
    ap.add_argument("--run-image", required=True, help="platform/run:<tag>")
    ap.add_argument("--artifacts", required=True)
    args = ap.parse_args()
    os.makedirs(args.artifacts, exist_ok=True)

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 60)
    step = "starting"

    def shot(name):
        driver.save_screenshot(os.path.join(args.artifacts, f"{name}.png"))

    def go(path):
        driver.get(args.url + path)

    def text():
        return driver.find_element(By.TAG_NAME, "body").text

    try:
        step = "sign in as the admin"
        go("/ui/login")
        shot("login")
        driver.find_element(By.ID, "user").send_keys("admin")
        driver.find_element(By.ID, "password").send_keys(args.password)
        driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "header .who"), "admin"))
        assert "Saved by deduplication" in text(), text()
        shot("overview")

        step = "create a project with a quota"
        go("/ui/projects")
        driver.find_element(By.CSS_SELECTOR, "details.new summary").click()
        driver.find_element(By.ID, "new-name").send_keys("tool-browser")
        driver.find_element(By.ID, "new-quota").send_keys("2GiB")
        driver.find_element(By.ID, "create-project").click()
        wait.until(ec.url_contains("/ui/projects/tool-browser"))
        assert "0 B of 2 GiB" in text(), text()
        go("/ui/projects")
        assert "tool-browser" in text(), text()
        shot("projects")

        step = "a pushed image's tags and pull line"
        go("/ui/r/tool-pub/web")
        body = text()
        assert "v1" in body and "podman pull" in body and "tool-pub/web:v1" in body, body
        shot("repository")

        step = "start a build and watch its log live"
        go("/ui/projects/tool-browser")
        driver.find_element(By.CSS_SELECTOR, "details.new summary").click()
        driver.find_element(By.ID, "source").send_keys(args.source)
        image = driver.find_element(By.ID, "image")
        image.clear()
        image.send_keys("web")
        driver.find_element(By.ID, "start-build").click()
        wait.until(ec.url_contains("/builds/b"))
        first_state = driver.find_element(By.ID, "state").text
        first_log = driver.find_element(By.ID, "log").text
        assert first_state in ("pending", "running"), first_state
        # The log grows while the page is open (server-sent events), to the
        # build's end; the state changes without a reload.
        wait.until(ec.text_to_be_present_in_element((By.ID, "state"), "succeeded"))
        log = driver.find_element(By.ID, "log").text
        assert "step 5 of 5" in log, log
        assert "step 5 of 5" not in first_log, "the last step came live, not with the page"
        assert len(log) > len(first_log), (first_log, log)
        shot("build")
        go("/ui/projects/tool-browser")
        assert "succeeded" in text(), text()
        shot("project")

        step = "the built image, current, then outdated"
        go("/ui/r/tool-browser/web")
        driver.find_element(By.CSS_SELECTOR, "table.tags a[href^='/ui/i/']").click()
        wait.until(ec.presence_of_element_located((By.ID, "freshness")))
        assert driver.find_element(By.ID, "freshness").text == "current", text()
        built = driver.current_url
        patch_run_image(args.url, args.password, args.run_image)
        driver.refresh()
        fresh = driver.find_element(By.ID, "freshness").text
        assert fresh == "outdated: rebase available", fresh
        shot("image")

        step = "rebase the fleet from the Fleet page"
        go("/ui/fleet")
        Select(driver.find_element(By.ID, "run_image")).select_by_value(args.run_image)
        driver.find_element(By.CSS_SELECTOR, "form.filter button").click()
        wait.until(ec.presence_of_element_located((By.ID, "outdated-count")))
        outdated = int(driver.find_element(By.ID, "outdated-count").text)
        assert outdated >= 1, text()
        shot("fleet-dry-run")
        driver.find_element(By.ID, "rebase-now").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#report h2"), "Rebased"))
        shot("fleet")
        go("/ui/r/tool-browser/web")
        # The tag moved to the rebased image: its page says current.
        link = driver.find_element(By.CSS_SELECTOR, "table.tags a[href^='/ui/i/']")
        assert link.get_attribute("href") != built, "latest moved"
        link.click()
        wait.until(ec.presence_of_element_located((By.ID, "freshness")))
        assert driver.find_element(By.ID, "freshness").text == "current", text()
        image_page = driver.current_url[len(args.url):]

        step = "the keyboard alone"
        go("/ui/")
        body_el = driver.find_element(By.TAG_NAME, "body")
        body_el.send_keys(Keys.TAB)
        focused = driver.switch_to.active_element
        assert focused.text == "Skip to the content", focused.text
        for _ in range(10):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            if driver.switch_to.active_element.text == "Projects":
                break
        else:
            raise AssertionError("Tab never reached the Projects link")
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        wait.until(ec.url_contains("/ui/projects"))

        step = "on a phone"
        driver.set_window_size(390, 844)
        for name, path in (("overview", "/ui/"), ("projects", "/ui/projects"),
                           ("project", "/ui/projects/tool-browser"),
                           ("repository", "/ui/r/tool-browser/web"),
                           ("image", image_page), ("builds", "/ui/builds"),
                           ("fleet", "/ui/fleet")):
            go(path)
            # Wide tables scroll inside their box; the page itself never
            # scrolls sideways.
            over = driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert over <= 0, f"{path} is {over}px wider than a phone's screen"
            shot(f"phone-{name}")
    except (AssertionError, TimeoutException) as e:
        shot("failed")
        print(f"dashboard.py: step '{step}' failed: {e!r}\nthe page:\n{driver.page_source[:4000]}",
              file=sys.stderr)
        driver.quit()
        return 1
    driver.quit()
    print("dashboard.py: every step held; screenshots in " + args.artifacts)
    return 0


def patch_run_image(url, password, run_image):
    """Pushes a new digest of the run image: its layers and one more (a
    patched file), as a security update would."""
    repo, tag = run_image.rsplit(":", 1)
    auth = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    def call(method, path, body=None, headers=None):
        req = urllib.request.Request(url + path, data=body, method=method)
        req.add_header("Authorization", auth)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        with urllib.request.urlopen(req) as r:
            return r.read(), r.headers

    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest, _ = call("GET", f"/v2/{repo}/manifests/{tag}", headers=accept)
    manifest = json.loads(manifest)
    config, _ = call("GET", f"/v2/{repo}/blobs/{manifest['config']['digest']}")
    config = json.loads(config)
    layer = patch_layer()
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    call("POST", f"/v2/{repo}/blobs/uploads/?digest={layer_digest}", layer,
         {"Content-Type": "application/octet-stream"})
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(layer_digest)
    config.setdefault("history", []).append({"created_by": "a security update"})
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": layer_digest, "size": len(layer)})
    body = json.dumps(config).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    call("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body,
         {"Content-Type": "application/octet-stream"})
    manifest["config"]["digest"] = digest
    manifest["config"]["size"] = len(body)
    call("PUT", f"/v2/{repo}/manifests/{tag}", json.dumps(manifest).encode(),
         {"Content-Type": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")})


def patch_layer():
    """An uncompressed tar with one file (its digest is its diff id)."""
    import io
    import tarfile
    out = io.BytesIO()
    data = f"patched at {time.time()}\n".encode()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("etc/patched")
        info.size = len(data)
        info.mtime = 315532800
        t.addfile(info, io.BytesIO(data))
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
