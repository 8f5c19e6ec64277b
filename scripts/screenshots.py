"""Regenerate the README's screenshots (docs/screenshot-*.png) from a running demo.

    .venv/bin/python scripts/screenshots.py [--out docs] [--wait 120]

Starts ``manage.py serve`` the way ``make run`` does (embedded Redis, SQLite and the demo
agents, all under a temporary var directory, on a free port), signs in with Playwright and
Debian's /usr/bin/chromium, waits until the demo agents have asked for a refund approval, and
saves each page at 1440 px (desktop) and 390 px (phone) wide:

    screenshot-overview.png / -phone.png   the overview with a pending approval
    screenshot-session.png / -phone.png    that session: the approval panel and the transcript
    screenshot-sessions.png / -phone.png   the sessions list
    screenshot-agents.png / -phone.png     the agents
    screenshot-login.png                   the sign-in page

Needs the test extra (``pip install -e '.[test]'``, for Playwright). Ctrl-C stops serve.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordination.devtools.processes import free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"viewport": {"width": 1440, "height": 900}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
USER = "supervisor"


def start_serve(var_dir: Path, port: int, password: str) -> tuple[subprocess.Popen, list[str]]:
    """``manage.py serve`` as a user starts it, until its banner; its output keeps draining
    into the returned list (a full pipe would block serve and uvicorn)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        COORDINATION_VAR_DIR=str(var_dir),
        PORT=str(port),
        DJANGO_SUPERUSER_USERNAME=USER,
        DJANGO_SUPERUSER_PASSWORD=password,
        LOG_FORMAT="text",
    )
    env.pop("OPENAI_API_KEY", None)  # the offline demo: the same pictures every time
    serve = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    for line in serve.stdout:
        output.append(line)
        if "Press Ctrl-C" in line:
            break
    else:
        raise SystemExit("serve stopped before it was ready:\n" + "".join(output[-30:]))
    threading.Thread(target=lambda: output.extend(serve.stdout), daemon=True).start()
    return serve, output


def stop_serve(serve: subprocess.Popen) -> None:
    if serve.poll() is None:
        serve.send_signal(signal.SIGINT)  # the way a user stops it: agents and Redis too
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()


def sign_in(context, base: str, password: str):
    page = context.new_page()
    page.goto(f"{base}/login/")
    page.fill("#id_username", USER)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def settle(page) -> None:
    """Live (websocket connected, on pages that are live) and no request in flight."""
    if page.locator("[data-live-indicator]").count():
        page.locator('[data-live-indicator][data-state="connected"]').wait_for(
            state="attached", timeout=20_000
        )
    page.wait_for_load_state("networkidle")


def shoot(page, path: Path, height: int | None = None) -> None:
    """The viewport, or the page's top ``height`` px (the session page: approval and transcript)."""
    if height is None:
        page.screenshot(path=str(path))
    else:
        tall = min(height, page.evaluate("document.documentElement.scrollHeight"))
        width = page.viewport_size["width"]
        page.screenshot(
            path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": tall}
        )
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def pending_session(page, base: str, wait: float) -> str:
    """The session of the oldest refund approval the overview lists (waits up to ``wait`` s)."""
    row = page.locator("#pending-approvals tr[data-session-id]").first
    row.wait_for(timeout=wait * 1000)
    return row.locator("a").first.get_attribute("href")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for a pending approval"
    )
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="coordinator-shots-") as var_dir:
        serve, output = start_serve(Path(var_dir), port, password)
        started = time.monotonic()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
                )
                desktop = browser.new_context(**DESKTOP)
                login = desktop.new_page()
                login.goto(f"{base}/login/")
                shoot(login, args.out / "screenshot-login.png")
                login.close()
                overview = sign_in(desktop, base, password)
                settle(overview)
                session_path = pending_session(overview, base, args.wait)
                waited = time.monotonic() - started
                print(f"a refund approval was pending {waited:.0f} s after serve was ready")
                # a little more of the demo: escalations and sessions in every status
                overview.wait_for_timeout(30_000)
                phone = browser.new_context(**PHONE)
                phone_page = sign_in(phone, base, password)
                pages = [
                    ("overview", "/"),
                    ("session", session_path),
                    ("sessions", "/sessions/"),
                    ("agents", "/agents/"),
                ]
                for name, path in pages:
                    for page, suffix in ((overview, ""), (phone_page, "-phone")):
                        page.goto(f"{base}{path}")
                        settle(page)
                        if name == "session":
                            page.locator("#session-approvals form").first.wait_for()
                        tall = 1300 if name == "session" and not suffix else None
                        shoot(page, args.out / f"screenshot-{name}{suffix}.png", tall)
                browser.close()
        finally:
            stop_serve(serve)
    if serve.returncode not in (0, -signal.SIGINT, None):
        print("".join(output[-30:]), file=sys.stderr)


if __name__ == "__main__":
    main()
