"""Opens a page in Debian's headless chromium (installed by .ci/run with apt, never downloaded) and reports,
through the DevTools protocol, its console errors, every network request it made, how many plots it shows,
and a screenshot."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


@dataclass
class PageVisit:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    plots: int = 0
    title: str = ""


def _devtools_port(process, profile: Path, timeout: float = 30.0) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().splitlines()[0])
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def visit(page: Path, screenshot: Path, timeout: float = 30.0) -> PageVisit:
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory() as folder:
        profile = Path(folder)
        # a session of its own: chromium's helper processes (renderer, crashpad) are stopped with it, and
        # none is left writing into the profile while it is removed
        process = subprocess.Popen([chromium_path(), "--headless", "--no-sandbox", "--disable-gpu",
                                    "--no-first-run", "--disable-extensions", "--remote-debugging-port=0",
                                    f"--user-data-dir={profile}", "--window-size=1280,2000", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(process, profile, timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as answer:
                target = next(t for t in json.load(answer) if t["type"] == "page")
            result = PageVisit()
            with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as socket:
                counter = iter(range(1, 10_000))

                def send(method: str, **params) -> int:
                    ident = next(counter)
                    socket.send(json.dumps({"id": ident, "method": method, "params": params}))
                    return ident

                def until(predicate, deadline: float):
                    while time.time() < deadline:
                        message = json.loads(socket.recv(timeout=max(0.1, deadline - time.time())))
                        method = message.get("method")
                        if method == "Runtime.consoleAPICalled" and message["params"]["type"] == "error":
                            result.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                                  for a in message["params"]["args"]))
                        elif method == "Runtime.exceptionThrown":
                            result.console_errors.append(message["params"]["exceptionDetails"].get("text", "exception"))
                        elif method == "Log.entryAdded" and message["params"]["entry"]["level"] == "error":
                            result.console_errors.append(message["params"]["entry"]["text"])
                        elif method == "Network.requestWillBeSent":
                            result.requests.append(message["params"]["request"]["url"])
                        if predicate(message):
                            return message
                    raise TimeoutError("the page did not finish loading")

                deadline = time.time() + timeout
                for method in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
                    ident = send(method)
                    until(lambda m, i=ident: m.get("id") == i, deadline)
                send("Page.navigate", url=page.resolve().as_uri())
                until(lambda m: m.get("method") == "Page.loadEventFired", deadline)
                ident = send("Runtime.evaluate", expression="[document.querySelectorAll("
                             "'img[data-plot]').length, document.title, [...document.images].every(i => "
                             "i.complete && i.naturalWidth > 0)]", returnByValue=True)
                value = until(lambda m: m.get("id") == ident, deadline)["result"]["result"]["value"]
                result.plots = value[0] if value[2] else -1  # -1: an image failed to decode
                result.title = value[1]
                ident = send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                shot = until(lambda m: m.get("id") == ident, deadline)["result"]["data"]
                screenshot.write_bytes(base64.b64decode(shot))
            return result
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """Chromium and every helper it started: SIGTERM, then SIGKILL to whatever is left after 10 s."""
    import os
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.time() + 10
        while time.time() < deadline:  # helpers may outlive the main process by a moment
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
