"""A real headless Chromium driven over the DevTools protocol, to check what a dashboard shows a person.

TensorBoard is a JavaScript app whose older dashboards (HParams, Scalars) render inside shadow DOM, so
`chromium --dump-dom` sees none of it; this opens the page, waits until the rendered text (shadow roots
included) contains what is expected, and takes a screenshot. Needs the `chromium` binary (Debian's
package) and websocket-client.
"""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# Text of the page including every shadow root (innerText does not enter them).
DEEP_TEXT = """(() => {
  const out = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) out.push(child.textContent);
      else if (child.nodeType === Node.ELEMENT_NODE && !['SCRIPT', 'STYLE'].includes(child.tagName)) walk(child);
    }
  };
  walk(document.documentElement);
  return out.join(' ').replace(/\\s+/g, ' ');
})()"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, width: int = 1500, height: int = 950, timeout: float = 120.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self._ids = itertools.count(1)

    def __enter__(self) -> "Browser":
        import websocket

        self._profile = tempfile.mkdtemp(prefix="chromium-")
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed")
        self._proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
             "--no-first-run", "--disable-extensions", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout,
                                               suppress_origin=True)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, **params):
        """One DevTools command; returns its result (events that arrive meanwhile are dropped)."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression=DEEP_TEXT, returnByValue=True)
        return result.get("result", {}).get("value") or ""

    def open(self, url: str, expect: list[str], timeout: float | None = None) -> str:
        """Load `url` and wait until its rendered text contains every string of `expect`; returns the text."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + (timeout or self.timeout)
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(s in text for s in expect):
                return text
            time.sleep(0.5)
        missing = [s for s in expect if s not in text]
        raise AssertionError(f"{url} did not show {missing}; the page shows: {text[:2000]}")

    def click_text(self, text: str) -> bool:
        """Click the first element (shadow roots included) whose own text is exactly `text`."""
        script = """((wanted) => {
          const stack = [document.documentElement];
          while (stack.length) {
            const node = stack.pop();
            if (node.shadowRoot) stack.push(node.shadowRoot);
            for (const child of node.children || []) stack.push(child);
            if (node.nodeType === Node.ELEMENT_NODE && node.textContent.trim() === wanted && !node.children.length) {
              node.click(); return true;
            }
          }
          return false;
        })(%s)""" % json.dumps(text)
        return bool(self.call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value"))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
