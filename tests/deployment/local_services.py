"""Start and stop the real services a deployment test needs (PostgreSQL, the Dagster webserver
and daemon, headless Chromium) as local processes, and always stop them by PID."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(found: object, what: str) -> None:
    """Skip when a system dependency is missing on a workstation; fail in CI, where
    .ci/system-deps.sh installs it."""
    if found:
        return
    message = f"{what} not found (install it with .ci/system-deps.sh)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_signals() -> None:
    # A process started from a shell job or a test runner may inherit SIGINT/SIGTERM as ignored;
    # restore the defaults so that stop() can end it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
          user: pwd.struct_passwd | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so its whole process group can be stopped), output to ``log``."""

    def prepare() -> None:
        _default_signals()
        if user is not None:
            _become(user)

    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd or REPO,
                                start_new_session=True, preexec_fn=prepare)


def _become(user: pwd.struct_passwd) -> None:
    """Drop root for ``user`` (in a child, before exec)."""
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid`` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(Path(stat).parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """Stop ``proc``, its process group and every process it started (some, such as Dagster's
    code servers, run in a session of their own): SIGTERM, then SIGKILL after ``timeout``."""
    if proc is None:
        return
    tree = descendants(proc.pid)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    left = [p for p in tree if _alive(p)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(check: Callable[[], object], timeout: float, what: str,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> object:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else "timed out"
    raise AssertionError(f"{what}: {state} (last error: {last!r})\n{tail}")


def pg_bindir() -> Path | None:
    """Debian's versioned PostgreSQL binaries (newest first), or whatever is on PATH."""
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                         reverse=True):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "postgres").exists():
            return Path(bindir)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("postgres") else None


class LocalPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth), owned by the ``postgres``
    user when running as root (initdb refuses root)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        # Not under pytest's tmp_path: its parents are private to root, the postgres user
        # could not reach a data directory there.
        self.root = Path(tempfile.mkdtemp(prefix="lgsid-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.superuser = "postgres"

    def url(self, db: str) -> str:
        """libpq connection URI (psycopg2.connect)."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{db}"

    def sqlalchemy_url(self, db: str) -> str:
        """For dagster-postgres: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which
        is not installed; dagster-postgres depends on psycopg2."""
        return f"postgresql+psycopg2://{self.superuser}@127.0.0.1:{self.port}/{db}"

    def start(self) -> LocalPostgres:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.superuser, "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120, cwd=self.root,
            preexec_fn=(lambda: _become(self.user)) if self.user else None,
        )
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        self.proc = start([str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                           "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
                           "-c", "max_connections=100"],
                          self.log, cwd=self.root, user=self.user)
        import psycopg2

        wait_for(lambda: psycopg2.connect(self.url("postgres")).close() or True, 60,
                 "PostgreSQL did not accept connections", self.proc, self.log)
        return self

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.url("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT to the postmaster), then remove the cluster."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


class LocalS3:
    """A throwaway S3 endpoint: moto's server (``python -m moto.server``) on a free local port.

    It runs as a separate process on purpose: delta-rs holds the GIL while it waits for the
    object store, so an in-process (threaded) server would never answer it.
    """

    ACCESS_KEY = "lgsid-test-key"  # moto accepts any credentials; these are not secrets
    SECRET_KEY = "lgsid-test-secret"
    REGION = "us-east-1"

    def __init__(self, log: Path):
        self.log = log
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> LocalS3:
        self.proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                          self.log)
        import urllib.request

        wait_for(lambda: urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).status == 200,
                 timeout=60, what="moto S3 server", proc=self.proc, log=self.log)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY, region_name=self.REGION)

    def credentials_env(self) -> dict[str, str]:
        """Credentials the way a deployment passes them: environment variables (a Kubernetes
        secret), which delta-rs and polars read themselves."""
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def storage_options(self) -> dict[str, str]:
        """The non-secret storage options (LGSID_STORAGE_OPTIONS)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.REGION, "AWS_ALLOW_HTTP": "true"}

    def stop(self) -> None:
        stop(self.proc, timeout=10)


def lgsid_cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``lgsid`` console script of this environment."""
    exe = VENV_BIN / "lgsid"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "orchestration.cli"]
    out = subprocess.run(cmd + list(args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"lgsid {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def child_env(**extra: str) -> dict:
    """The environment for child processes: offline model loading, few threads."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", "DAGSTER_DISABLE_TELEMETRY": "1"})
    env.update(extra)
    return env


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessChromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3/4, ``--remote-debugging-pipe``):
    navigate, wait until the page shows some text, press keys, take screenshots, read the DOM."""

    def __init__(self, binary: str, workdir: Path, width: int = 1600, height: int = 1000):
        self.width, self.height = width, height
        self.log = workdir / "chromium.log"
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def prepare() -> None:
            _default_signals()
            # Copy first: either pipe end may itself be fd 3 or 4.
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--remote-debugging-pipe", f"--window-size={width},{height}",
               "--hide-scrollbars", "about:blank"]
        # close_fds=False so that fds 3 and 4 survive into the browser; the parent's own
        # descriptors are close-on-exec (Python's default) and do not leak.
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=prepare, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        import json
        import select

        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(f"no reply to {method} from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk

    def open_page(self) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.page("Page.enable")
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self.session

    def page(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        return self.send(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def goto(self, url: str, wait_for_text: list[str], timeout: float = 45.0) -> str:
        """Navigate and wait until every string in ``wait_for_text`` is on the page; return its text."""
        import json

        self.page("Page.navigate", {"url": url})
        check = f"(() => {{ const t = document.body ? document.body.innerText : ''; " \
                f"return {json.dumps(wait_for_text)}.every(s => t.includes(s)) ? t : ''; }})()"
        return wait_for(lambda: self.evaluate(check), timeout, f"page {url} did not show {wait_for_text}")

    def text(self) -> str:
        return self.evaluate("document.body.innerText") or ""

    def settle(self, quiet: float = 2.0, timeout: float = 30.0) -> None:
        """Wait until the page is quiet for ``quiet`` seconds: no DOM change and no finished
        request (the UI loads layout, then live status over GraphQL)."""
        probe = "[document.body.innerHTML.length, performance.getEntriesByType('resource').length].join()"
        deadline = time.monotonic() + timeout
        last, since = self.evaluate(probe), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.evaluate(probe)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def press(self, key: str, code: str, key_code: int, alt: bool = False) -> None:
        modifiers = 1 if alt else 0
        for kind in ("keyDown", "keyUp"):
            self.page("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code, "modifiers": modifiers,
                                                 "windowsVirtualKeyCode": key_code})

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.page("Page.captureScreenshot", {"format": "png"}, timeout=60)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=5)
        except Exception:
            pass
        stop(self.proc, timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
