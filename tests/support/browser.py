"""A real browser for the console's tests: Debian's chromium driven by playwright-core through
tests/support/browser_driver.mjs, one JSON command per line. Python keeps the test's logic, so a
test can park a job at a failpoint, look at PostgreSQL and steer the page in one place."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from support.mesh import REPO_ROOT

DRIVER = REPO_ROOT / "tests" / "support" / "browser_driver.mjs"


class BrowserError(AssertionError):
    """The page did not do what the command asked (a selector never appeared, ...)."""


class Browser:
    def __init__(self, screenshots: Path) -> None:
        self.screenshots = screenshots
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Browser:
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._reply() == "ready"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _reply(self) -> Any:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BrowserError("the browser driver exited")
        reply = json.loads(line)
        if not reply["ok"]:
            raise BrowserError(reply["error"])
        return reply["value"]

    def do(self, command: str, **args: Any) -> Any:
        try:
            return self._send(command, args)
        except BrowserError as error:
            # What the page said and showed, for the failure's report.
            messages = "\n".join(self._send("messages", {}))
            shown = self._send("evaluate", {"expression": "return document.body.innerText"})
            raise BrowserError(
                f"{error}\npage at {self._send('url', {})}:\n{shown}\nconsole:\n{messages}"
            ) from None

    def _send(self, command: str, args: dict[str, Any]) -> Any:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"command": command, "args": args}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def new_context(self, width: int = 1280, height: int = 800) -> None:
        """A fresh browser profile (no cookies, no storage) with this viewport."""
        self.do("newContext", width=width, height=height)

    def wait_until(self, expression: str, arg: Any = None) -> Any:
        """Waits until the function body `expression` (over `arg`) is truthy in the page."""
        return self.do("waitForFunction", expression=expression, arg=arg)

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        return self.do("evaluate", expression=expression, arg=arg)

    def screenshot(self, name: str) -> Path:
        self.screenshots.mkdir(parents=True, exist_ok=True)
        return Path(self.do("screenshot", path=str(self.screenshots / f"{name}.png")))

    def csp_violations(self) -> list[str]:
        return [m for m in self.do("messages") if "Content Security Policy" in m]
