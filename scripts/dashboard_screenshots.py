#!/usr/bin/env python
"""Re-take the screenshots of docs/dashboard.md from the LIVE Ray dashboard of a rayrl run.

    .venv/bin/python scripts/dashboard_screenshots.py            # -> docs/images/dashboard/*.png
    .venv/bin/python scripts/dashboard_screenshots.py --max-steps 400 --no-restart-demo

What it does, in order (about 6 minutes on 2 cores):

1. Finds Chromium (installs Debian's ``chromium`` with apt-get when run as root; otherwise says how) and
   Prometheus (``prometheus``, optional: without it the metrics screenshot is skipped).
2. Starts a one-node Ray cluster of its own (``ray start --head --block``, all cores and at least what the
   run reserves) with the dashboard on 127.0.0.1:8265 (``--port``), in a temp dir of its own, with token
   authentication (the token of ``ray get-auth-token``), and Prometheus on 127.0.0.1:9090 scraping it with
   the config Ray writes into the session.
3. Submits the default experiment as a Ray job (``ray job submit``), as on a cluster (docs/cluster.md), so
   the driver's step lines land in the job's logs.
4. Polls the dashboard's REST API (``/api/v0/actors``) until replica-0, rollout-0, learner-0 and
   policy-board are ALIVE in the run's namespace and step lines are in the job's log.
5. Drives headless Chromium over the Chrome DevTools Protocol (aiohttp's websocket client, already in the
   venv: no playwright/puppeteer download; the token goes in the dashboard's cookie) and screenshots the
   pages: overview, jobs, the job's page and its driver log filtered to the step lines, actors,
   replica-0's page, cluster, logs (the node's worker files), metrics.
6. Unless ``--no-restart-demo``: kills replica-0's process, waits until Ray has restarted it, and
   screenshots its page (Restarted 1) and the driver's warning in the job's log.
7. Once Prometheus holds ``--metric-min-s`` of the run: its graph page of rayrl's metrics (``rayrl_*``,
   exported as ``ray_rayrl_*``; Ray's own CPU and actor metrics when rayrl exports none).
8. Stops the job, Prometheus, Chromium and its own Ray node (only the processes it started; SIGTERM or
   Ctrl-C on this script does the same), and crops and palette-quantises the PNGs with Pillow (at most
   ~300 KB each).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ROLES = ("replica-0", "rollout-0", "learner-0", "policy-board")
MAX_PNG_BYTES = 300_000


def log(msg: str) -> None:
    print(f"[dashboard_screenshots {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def logfile(path: Path) -> int:
    """A file descriptor for a child process's output (it outlives this call)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("chromium not found: apt-get install -y chromium")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "fonts-dejavu-core"], check=True, env=env)
        return shutil.which("chromium") or sys.exit("apt-get installed chromium but it is not on PATH")
    sys.exit("chromium not found: install it (Debian/Ubuntu: sudo apt-get install chromium; macOS: brew install "
             "--cask chromium) or put google-chrome on PATH, then run this script again")


def find_prometheus() -> str | None:
    path = shutil.which("prometheus")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("prometheus not found: apt-get install -y prometheus")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus"], env=env, check=False).returncode == 0:
            return shutil.which("prometheus")
    log("prometheus not found (Debian/Ubuntu: apt-get install prometheus): the metrics screenshot is skipped")
    return None


# --------------------------------------------------------------------------------------------------------
# The dashboard's REST API
# --------------------------------------------------------------------------------------------------------


class Dashboard:
    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.token = token

    def get(self, path: str, timeout: float = 10.0):
        req = urllib.request.Request(self.url + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode()
        return json.loads(body) if body[:1] in "[{" else body

    def actors(self) -> list[dict]:
        try:
            out = self.get("/api/v0/actors?limit=1000&detail=1")
        except (urllib.error.URLError, OSError, ValueError):
            return []
        return out.get("data", {}).get("result", {}).get("result", []) or []

    def alive(self) -> bool:
        try:
            self.get("/api/version", timeout=3)
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def job_logs(self, submission_id: str) -> str:
        try:
            return self.get(f"/api/jobs/{submission_id}/logs").get("logs", "")
        except (urllib.error.URLError, OSError, ValueError):
            return ""

    def job(self, submission_id: str) -> dict:
        try:
            return self.get(f"/api/jobs/{submission_id}")
        except (urllib.error.URLError, OSError, ValueError):
            return {}


def by_name(actors: list[dict]) -> dict[str, dict]:
    """The newest record of each named actor (a restarted one keeps its id; a dead one may have a successor)."""
    out: dict[str, dict] = {}
    for a in actors:
        name = a.get("name")
        if name and (name not in out or a.get("state") == "ALIVE"):
            out[name] = a
    return out


# --------------------------------------------------------------------------------------------------------
# Headless Chromium over the DevTools protocol
# --------------------------------------------------------------------------------------------------------


class Browser:
    def __init__(self, chromium: str, width: int, height: int, workdir: Path):
        self.width, self.height = width, height
        self.profile = workdir / "chromium-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        args = [chromium, "--headless=new", f"--window-size={width},{height}", "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile}", "--disable-gpu",
                "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-dev-shm-usage", "--force-device-scale-factor=1", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=logfile(workdir / "chromium.log"),
                                     start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            if self.proc.poll() is not None:
                sys.exit(f"chromium exited ({self.proc.returncode}); see {workdir / 'chromium.log'}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self._id = 0
        self.ws = None
        self.session = None

    async def connect(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
            targets = await r.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Network.enable")
        await self.call("Emulation.setDeviceMetricsOverride",
                        width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)

    async def call(self, method: str, **params):
        self._id += 1
        my_id = self._id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=120)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def set_token_cookie(self, url: str, token: str) -> None:
        # What the dashboard's login box does: POST /api/authenticate sets this HttpOnly cookie.
        await self.call("Network.setCookie", name="ray-authentication-token", value=token, url=url, path="/",
                        httpOnly=True)

    async def eval(self, js: str):
        out = await self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        return out.get("result", {}).get("value")

    async def goto(self, url: str, wait_text: list[str] | None = None, settle_s: float = 3.0,
                   timeout_s: float = 60.0, forbid: tuple[str, ...] = ("Loading",)) -> bool:
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(1.0)  # a hash route of the single-page app: let the old page go
        ok = await self.wait_for(wait_text or [], timeout_s, forbid)
        await asyncio.sleep(settle_s)
        return ok

    async def wait_for(self, texts: list[str], timeout_s: float = 60.0,
                       forbid: tuple[str, ...] = ("Loading",)) -> bool:
        """Wait until the page shows every one of ``texts`` and none of ``forbid`` (the dashboard's "Loading")."""
        deadline = time.monotonic() + timeout_s
        js = "document.body ? document.body.innerText : ''"
        while time.monotonic() < deadline:
            body = await self.eval(js) or ""
            if all(t in body for t in texts) and not any(f in body for f in forbid):
                return True
            await asyncio.sleep(1.0)
        log(f"  (still missing after {timeout_s:.0f}s: {[t for t in texts if t not in (await self.eval(js) or '')]})")
        return False

    async def click_text(self, text: str, selector: str = "a,button,[role=tab],[role=button],div,span") -> bool:
        """Click the innermost element whose own text is ``text``."""
        js = f"""(() => {{
            const want = {json.dumps(text)};
            const els = [...document.querySelectorAll({json.dumps(selector)})]
                .filter(e => e.offsetParent !== null && (e.innerText || '').trim() === want);
            if (!els.length) return false;
            els[els.length - 1].scrollIntoView({{block: 'center'}});
            els[els.length - 1].click();
            return true;
        }})()"""
        return bool(await self.eval(js))

    async def scroll_to_text(self, text: str, block: str = "start") -> bool:
        js = f"""(() => {{
            const want = {json.dumps(text)};
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (walker.nextNode()) {{
                if (walker.currentNode.textContent.includes(want)) {{
                    walker.currentNode.parentElement.scrollIntoView({{block: {json.dumps(block)}}});
                    return true;
                }}
            }}
            return false;
        }})()"""
        return bool(await self.eval(js))

    async def viewport(self, height: int | None = None) -> None:
        """Lay the page out in a window this tall (the dashboard's tables and log views grow with it)."""
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height or self.height,
                        deviceScaleFactor=1, mobile=False)

    async def type_into(self, label: str, text: str) -> bool:
        """Focus the text box labelled ``label`` (placeholder or MUI label) and type ``text`` as a user would."""
        js = f"""(() => {{
            const want = {json.dumps(label)};
            const inputs = [...document.querySelectorAll('input')].filter(i => i.offsetParent !== null);
            const hit = inputs.find(i => i.placeholder === want
                || [...(i.labels || [])].some(l => l.innerText.trim() === want)
                || (i.closest('.MuiFormControl-root, .MuiTextField-root') || {{}}).innerText === want);
            if (!hit) return false;
            hit.scrollIntoView({{block: 'center'}}); hit.focus(); hit.select && hit.select();
            return true;
        }})()"""
        if not await self.eval(js):
            return False
        await self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                            windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)
        return True

    async def screenshot(self, path: Path, crop: tuple[int, int] | None = None) -> None:
        """Screenshot the viewport as the user sees it (the dashboard scrolls inside its own panes), or the
        rows ``crop = (top, bottom)`` of it."""
        out = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(out["data"]))
        shrink(path, crop)
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        log(f"  wrote {shown} ({path.stat().st_size // 1024} KB)")

    async def close(self) -> None:
        try:
            if self.ws is not None:
                await self.ws.close()
            if self.session is not None:
                await self.session.close()
        finally:
            stop_process_group(self.proc, "chromium")


def shrink(path: Path, crop: tuple[int, int] | None = None, limit: int = MAX_PNG_BYTES) -> None:
    """Crop a PNG to the rows ``crop`` and keep it under ``limit`` bytes: palette-quantise (screenshots have few
    colours), then downscale."""
    try:
        from PIL import Image
    except ImportError:
        log("  (no Pillow: the PNG is left as Chromium wrote it, uncropped)")
        return
    img = Image.open(path).convert("RGB")
    if crop:
        img = img.crop((0, crop[0], img.width, min(crop[1], img.height)))
    scale = 1.0
    while True:
        im = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        buf = io.BytesIO()
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, "PNG", optimize=True)
        if buf.tell() <= limit or scale < 0.5:
            path.write_bytes(buf.getvalue())
            return
        scale *= 0.85


# --------------------------------------------------------------------------------------------------------
# Processes this script starts (and only those it stops)
# --------------------------------------------------------------------------------------------------------


def stop_process_group(proc: subprocess.Popen | None, what: str, timeout_s: float = 30.0,
                       leader_only: bool = False) -> None:
    """SIGTERM the group this script started ``proc`` in (or only ``proc``, which then stops its children, as
    ``ray start --block`` does); SIGKILL the group after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    log(f"stopping {what} (pid {proc.pid})")
    try:
        if leader_only:
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def pids_using(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (this script's own temp dir): leftovers of its Ray node."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


# --------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------


def cpus_for(experiment: str) -> int:
    """The CPUs to give the Ray node: all cores, and at least what the run reserves (``rayrl plan``'s total),
    as a local Ray that ``rayrl train`` starts gets."""
    import math

    cores = os.cpu_count() or 1
    try:
        from rayrl.actors.fleet import fleet_requests
        from rayrl.commands.plan import total
        from rayrl.config.loading import load_config

        cpus, _ = total(fleet_requests(load_config(str(REPO / experiment), [])))
        return max(cores, math.ceil(cpus))
    except Exception as e:  # noqa: BLE001 - an older rayrl without `rayrl plan`
        log(f"could not size the run's CPUs ({type(e).__name__}: {e}); giving the node {cores} (--num-cpus)")
        return cores


def auth_token() -> str:
    out = subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], capture_output=True, text=True,
                         check=False)
    token = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0 or not token:
        sys.exit(f"ray get-auth-token failed: {out.stderr.strip()}")
    return token


async def take_screenshots(args, dash: Dashboard, job_id: str, namespace: str, token: str,
                           prom_url: str | None, workdir: Path, first_step_at: float) -> list[str]:
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    browser = Browser(args.chromium, args.width, args.height, workdir)
    taken: list[str] = []
    d = dash.url

    async def shot(name: str, url: str | None = None, wait_text: list[str] = (), settle_s: float = 3.0,
                   height: int | None = None, crop: tuple[int, int] | None = None,
                   forbid: tuple[str, ...] = ("Loading",)) -> None:
        log(f"screenshot {name}: {url or '(current page)'}")
        if url:
            await browser.viewport(height)
            await browser.goto(url, list(wait_text), settle_s=settle_s, timeout_s=args.page_timeout, forbid=forbid)
        elif wait_text:
            await browser.wait_for(list(wait_text), args.page_timeout)
        await browser.screenshot(out_dir / f"{name}.png", crop=crop)
        taken.append(name)

    try:
        await browser.connect()
        await browser.set_token_cookie(d, token)

        await shot("overview", f"{d}/#/overview", ["Cluster status", job_id], settle_s=4)
        await shot("jobs", f"{d}/#/jobs", [job_id, "RUNNING"], crop=(0, 620))

        # The job's page: status, then the driver's log, filtered to rayrl's step lines.
        await shot("job", f"{d}/#/jobs/{job_id}", [job_id, "Step 1 |"], settle_s=4, height=1400, crop=(0, 1170))
        if await browser.type_into("Keyword", "rayrl: Step"):
            await asyncio.sleep(2)
            await browser.scroll_to_text("Ray Core Overview")
            await asyncio.sleep(1)
            await shot("job_driver_log", None, ["Step 2 |"], crop=(0, 700))
        else:
            log("  the job page's Keyword box was not found: job_driver_log skipped")

        await shot("actors", f"{d}/#/actors", list(ROLES), settle_s=4, crop=(0, 880))

        actors = by_name([a for a in dash.actors() if a.get("ray_namespace") == namespace])
        replica = actors.get("replica-0", {})
        if replica.get("actor_id"):
            await shot("actor_replica", f"{d}/#/actors/{replica['actor_id']}", ["replica-0", "Logs"], settle_s=4)

        await shot("cluster", f"{d}/#/cluster", ["InferenceActor", "Learner", "RolloutWorker"], settle_s=5,
                   height=1500)

        await browser.viewport()
        await browser.goto(f"{d}/#/logs", ["Node ID"], settle_s=2, timeout_s=args.page_timeout)
        # Logs -> the node -> its files; typing "worker-" leaves the actors' and tasks' worker-*.out/.err.
        if await browser.click_text(next((t for t in (await browser.eval(
                "[...document.querySelectorAll('a')].map(a => a.innerText.trim())") or [])
                if t.startswith("Node ID")), "")):
            await browser.wait_for(["worker-"], args.page_timeout)
            await browser.type_into("File Name", "worker-")
            await asyncio.sleep(2)
        await shot("logs", None, crop=(0, 700))

        await shot("metrics", f"{d}/#/metrics", ["Grafana"], settle_s=2, crop=(0, 200))

        if args.restart_demo and replica.get("pid"):
            await restart_demo(browser, dash, namespace, replica, shot, d, job_id)

        if prom_url:
            await prometheus_shots(args, browser, prom_url, shot, first_step_at)
    finally:
        await browser.close()
    return taken


async def prometheus_shots(args, browser: Browser, prom_url: str, shot, first_step_at: float) -> None:
    names = await wait_for_metrics(prom_url, args.metric, timeout_s=args.metric_timeout)
    rayrl = sorted(n for n in names if "rayrl_" in n)  # Ray's exporter prefixes them: ray_rayrl_...
    if args.metric:
        panels = [args.metric]
    elif rayrl:
        log(f"rayrl metrics in Prometheus: {', '.join(rayrl)}")
        # rayrl sets every gauge again at each step (a Ray gauge not set for ~2 export intervals leaves
        # Prometheus), so the eval reward draws as a line between evaluations.
        want = {"train_reward_mean": "max by (run) ({})",
                "eval_reward_mean": "max by (run) ({})",
                "weights_version": "max by (run, replica) ({})"}
        panels = [q.format(n) for key, q in want.items() for n in rayrl if n.endswith("rayrl_" + key)]
        panels = panels or rayrl[:2]
    else:
        log(f"prometheus has no rayrl_* metric after {args.metric_timeout:.0f}s ({len(names)} Ray metrics): "
            "graphing Ray's own instead")
        panels = [p for p, n in (("max by (ip) (ray_node_cpu_utilization)", "ray_node_cpu_utilization"),
                                 ("sum by (Name, State) (ray_actors)", "ray_actors")) if n in names]
    if not panels:
        return
    # a graph worth reading: some minutes of the run
    wait = first_step_at + args.metric_min_s - time.monotonic()
    if wait > 0:
        log(f"  letting Prometheus collect {wait:.0f}s more of the run")
        await asyncio.sleep(wait)
    params: dict[str, str] = {}
    for i, expr in enumerate(panels):
        params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": args.metric_range,
                       f"g{i}.stacked": "0", f"g{i}.show_exemplars": "0"})
    name = "prometheus" if args.metric else "prometheus_rayrl" if rayrl else "prometheus_ray"
    await shot(name, f"{prom_url}/graph?{urllib.parse.urlencode(params)}", ["Total time series"], settle_s=6,
               height=120 + 700 * len(panels), forbid=())


def metric_names(prom_url: str) -> list[str]:
    with urllib.request.urlopen(f"{prom_url}/api/v1/label/__name__/values", timeout=5) as r:
        return json.loads(r.read())["data"]


async def wait_for_metrics(prom_url: str, wanted: str | None, timeout_s: float) -> list[str]:
    """Prometheus' metric names, once ``wanted`` (else a rayrl_* one) is among them or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    names: list[str] = []
    while True:
        try:
            names = await asyncio.to_thread(metric_names, prom_url)
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            names = []
        if (wanted in names) if wanted else any("rayrl_" in n for n in names):
            return names
        if time.monotonic() > deadline:
            return names
        await asyncio.sleep(5)


async def restart_demo(browser: Browser, dash: Dashboard, namespace: str, replica: dict, shot, d: str,
                       job_id: str) -> None:
    pid = int(replica["pid"])
    log(f"restart demo: SIGKILL replica-0 (pid {pid}, an actor of this script's own Ray node)")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        a = by_name([x for x in dash.actors() if x.get("ray_namespace") == namespace]).get("replica-0", {})
        if a.get("state") == "ALIVE" and a.get("pid") and int(a["pid"]) != pid:
            log(f"  replica-0 is ALIVE again (pid {a['pid']}, num_restarts {a.get('num_restarts')})")
            break
        await asyncio.sleep(2)
    else:
        log("  replica-0 did not come back within 180 s")
    await asyncio.sleep(3)
    await shot("actor_replica_restarted", f"{d}/#/actors/{replica['actor_id']}", ["replica-0"], settle_s=4)
    # The driver's side of it: its warning in the job's log.
    deadline = time.monotonic() + 60
    while "was restarted" not in dash.job_logs(job_id) and time.monotonic() < deadline:
        await asyncio.sleep(2)
    await browser.viewport(1400)
    await browser.goto(f"{d}/#/jobs/{job_id}", [job_id, "Step 1 |"], settle_s=3, timeout_s=60)
    # The log view renders only the lines in sight: filter to the warnings rather than scroll to the line.
    if await browser.type_into("Keyword", "WARNING"):
        await asyncio.sleep(2)
        await browser.scroll_to_text("Ray Core Overview")
        await asyncio.sleep(1)
        await shot("job_driver_log_restart", None, ["was restarted"], crop=(0, 520))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="experiments/default.toml")
    p.add_argument("--max-steps", type=int, default=400, help="long enough to outlast the screenshots; the job "
                   "is stopped once they are taken")
    p.add_argument("--port", type=int, default=8265, help="dashboard port (127.0.0.1)")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--out-dir", type=Path, default=REPO / "docs" / "images" / "dashboard")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--page-timeout", type=float, default=60.0)
    p.add_argument("--metric", default=None, help="metric to graph in Prometheus (default: the first rayrl_* one "
                   "with 'reward' in its name)")
    p.add_argument("--metric-range", default="5m", help="time range of the Prometheus graph")
    p.add_argument("--metric-min-s", type=float, default=180.0, help="seconds of the run Prometheus collects "
                   "before its screenshot")
    p.add_argument("--metric-timeout", type=float, default=120.0, help="seconds to wait for rayrl_* metrics in "
                   "Prometheus before graphing Ray's own")
    p.add_argument("--no-restart-demo", dest="restart_demo", action="store_false",
                   help="skip killing replica-0 to show a restarted actor")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the Ray node (default: all cores, at "
                   "least what the run reserves)")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args()
    # SIGTERM (kill PID) runs the clean-up below as Ctrl-C does: the job, Prometheus and this Ray node stop.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    args.chromium = find_chromium()
    prometheus = find_prometheus()
    if port_in_use(args.port):
        sys.exit(f"127.0.0.1:{args.port} is in use (another dashboard?): pass --port")
    if prometheus and port_in_use(args.prometheus_port):
        sys.exit(f"127.0.0.1:{args.prometheus_port} is in use: pass --prometheus-port")

    workdir = Path(tempfile.mkdtemp(prefix="rdash-", dir="/tmp"))  # short: Ray's socket paths must stay short
    token = auth_token()
    ray_env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    ray_env.pop("RAY_ADDRESS", None)
    prom_url = f"http://127.0.0.1:{args.prometheus_port}" if prometheus else None
    if prom_url:
        # The dashboard's own charts ask Prometheus (Grafana would draw the Metrics tab).
        ray_env["RAY_PROMETHEUS_HOST"] = prom_url
    dash = Dashboard(f"http://127.0.0.1:{args.port}", token)
    ray_proc = prom_proc = None
    job_id = f"rayrl-dashboard-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = workdir / "runs" / f"default-{time.strftime('%Y%m%d-%H%M%S')}"
    namespace = run_dir.name
    job_submitted = False
    try:
        log(f"starting a Ray node in {workdir} with the dashboard on {dash.url}")
        ray_proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--temp-dir={workdir}/ray",
             f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={args.port}",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--num-cpus={args.num_cpus or cpus_for(args.experiment)}", "--include-dashboard=true",
             "--disable-usage-stats"],
            env=ray_env, stdout=logfile(workdir / "ray-start.log"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 120
        while not dash.alive():
            if ray_proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the Ray node did not start: see {workdir / 'ray-start.log'}:\n"
                         + (workdir / "ray-start.log").read_text()[-3000:])
            time.sleep(1)

        if prometheus:
            prom_cfg = Path(f"{workdir}/ray/session_latest/metrics/prometheus/prometheus.yml")
            for _ in range(60):
                if prom_cfg.exists():
                    break
                time.sleep(1)
            log(f"starting Prometheus on {prom_url} with Ray's {prom_cfg}")
            prom_proc = subprocess.Popen(
                [prometheus, f"--config.file={prom_cfg}", f"--web.listen-address=127.0.0.1:{args.prometheus_port}",
                 f"--storage.tsdb.path={workdir}/prometheus-data"],
                cwd=prom_cfg.parent, stdout=logfile(workdir / "prometheus.log"), stderr=subprocess.STDOUT,
                start_new_session=True)

        entry = (f"cd {REPO} && {VENV_BIN / 'rayrl'} train {args.experiment} --max_steps {args.max_steps} "
                 f"--output-dir {run_dir}")
        log(f"ray job submit --submission-id {job_id} -- {entry}")
        subprocess.run([str(VENV_BIN / "ray"), "job", "submit", f"--address={dash.url}", f"--submission-id={job_id}",
                        "--no-wait", "--", "bash", "-c", entry], env=ray_env, check=True)
        job_submitted = True

        log(f"waiting for {', '.join(ROLES)} in namespace {namespace} and the first step lines")
        deadline = time.monotonic() + 900
        while True:
            named = by_name([a for a in dash.actors() if a.get("ray_namespace") == namespace])
            alive = [r for r in ROLES if named.get(r, {}).get("state") == "ALIVE"]
            logs = dash.job_logs(job_id)
            if len(alive) == len(ROLES) and logs.count("Step ") >= 3:
                break
            status = dash.job(job_id).get("status")
            if status in ("FAILED", "STOPPED", "SUCCEEDED"):
                sys.exit(f"the job ended ({status}) before the screenshots:\n{logs[-3000:]}")
            if time.monotonic() > deadline:
                sys.exit(f"timed out: alive {alive}; job log:\n{logs[-3000:]}")
            time.sleep(3)
        first_step_at = time.monotonic()
        log(f"actors alive: {alive}")

        taken = asyncio.run(take_screenshots(args, dash, job_id, namespace, token, prom_url, workdir, first_step_at))
        log(f"took {len(taken)} screenshots: {', '.join(taken)}")
        print(dash.job_logs(job_id)[-1500:])
    finally:
        if job_submitted:
            log(f"ray job stop {job_id}")
            subprocess.run([str(VENV_BIN / "ray"), "job", "stop", f"--address={dash.url}", job_id], env=ray_env,
                           capture_output=True, timeout=120, check=False)
        stop_process_group(prom_proc, "prometheus")
        stop_process_group(ray_proc, "the Ray node (ray start --block)", timeout_s=45, leader_only=True)
        if ray_proc is not None:
            try:
                os.killpg(ray_proc.pid, signal.SIGKILL)  # whatever of its group is left
            except ProcessLookupError:
                pass
        leftovers = pids_using(str(workdir))
        if leftovers:
            log(f"killing leftovers of this script's Ray node: {leftovers}")
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")


if __name__ == "__main__":
    main()
