"""A small client for headless Chromium's DevTools protocol over a pipe, for the browser tests.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands on file descriptor 3
and writes answers and events on descriptor 4, each a JSON message ended by a NUL byte. No port
is opened, no WebSocket library or driver binary is needed, and nothing is downloaded: the test
needs Debian's ``chromium`` package and the standard library only.

The flags keep Chromium off the network (no background fetches, component updates, sync, or DNS:
every host name resolves to nothing) and out of the user's profile (a fresh ``--user-data-dir``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """Debian's ``chromium`` (``/usr/bin/chromium``), or one on PATH."""
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium process; ``send`` a command, read ``events``; ``close`` ends it."""

    def __init__(self, binary: str, profile: Path, log: Path, size: tuple[int, int] = (1400, 1000)):
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        flags = [*FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        # bash puts our pipe ends on descriptors 3 and 4, where Chromium looks for them (dash, the
        # Debian /bin/sh, takes only one-digit descriptor numbers in a redirection).
        command = " ".join(
            ["exec", _quote(binary), *map(_quote, flags), "about:blank",
             f"3<&{to_child}", f"4>&{from_child}"]
        )  # fmt: skip
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: close() ends Chromium's helpers too
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # ---- protocol
    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Send one command and wait for its answer (events meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        want = self._next_id
        deadline = time.monotonic() + timeout
        while True:
            for answer in self._messages(deadline):
                if answer.get("id") == want:
                    if "error" in answer:
                        raise ProtocolError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
                self.events.append(answer)

    def wait_for(self, event: str, session: str | None = None, timeout: float = 30.0) -> dict:
        """The first ``event`` (of ``session``) seen, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if e.get("method") == event and (session is None or e.get("sessionId") == session):
                    return e
            seen = len(self.events)
            self.events.extend(self._messages(deadline))

    def _messages(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"Chromium exited (code {self.process.poll()})")
                self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in complete if m]

    # ---- pages
    def open_page(self) -> str:
        """A new tab, attached; returns its session id (Page, Runtime, Log and Network on)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise ProtocolError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, session: str, x: float, y: float) -> None:
        """A real left click at (x, y) in CSS pixels of the viewport."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session=session,
            )

    def screenshot(self, session: str, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                              "scale": 1}  # fmt: skip
        data = self.send("Page.captureScreenshot", params, session=session, timeout=60)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                with contextlib.suppress(OSError):
                    os.write(
                        self._write,
                        json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0",
                    )
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)  # the group this client started
                    self.process.wait(timeout=10)
        finally:
            for fd in (self._read, self._write):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._log.close()


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
