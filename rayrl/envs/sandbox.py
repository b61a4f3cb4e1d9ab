"""Run untrusted Python programs (the model's answers to program tasks) so that they harm nothing.

Each run is a fresh Python process (``python -I -S``: no user site, no environment variables honoured,
no third-party packages) in a throwaway working folder that is deleted afterwards, with:

- **limits** (``resource.setrlimit``, soft = hard): CPU seconds, address space (memory), size of any file
  written (stdout and stderr go to files, so output is bounded too), open files, no core dumps; a wall
  clock timeout kills the whole process group (a program that sleeps uses no CPU);
- **nothing of the caller's environment**: the environment holds only ``PATH``, ``LANG`` and ``HOME`` (the
  working folder), so no secret (API keys, tokens, cloud credentials) reaches the program;
- **no network**: a new network namespace with only a down loopback when the OS allows it (root with
  CAP_SYS_ADMIN, as here), and in every case an audit hook (``sys.addaudithook``, which the program cannot
  remove) that refuses every ``socket.*`` event;
- **no escape through the interpreter**: the same hook refuses process creation (fork, exec, spawn,
  subprocess, ``os.system``), signals to other processes, ``ctypes`` and ``_posixsubprocess``, raising
  limits, and opening, listing or changing any path outside the working folder and the standard library
  (so the user's files cannot be read).

A refused action raises ``PermissionError`` inside the program and is counted (``blocked``). This is a
guard for code that a model wrote while learning, not a container: for adversarial code at scale run the
rollout workers inside gVisor/nsjail/firejail as well.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
BLOCKED_MARK = "RAYRL-SANDBOX-BLOCKED:"

# Runs inside the sandboxed interpreter: reads the program, its tests' inputs and this run's nonce, installs
# the audit hook, then runs the program once per input with fresh globals, stdin from the input and stdout
# captured (capped); one result line per test, each starting with the nonce, which the program never sees.
BOOTSTRAP = r"""
import builtins, io, json, os, sys
WORK = os.path.realpath(os.getcwd())
READABLE = tuple(os.path.realpath(p) for p in sys.path if p) + (WORK,)
with open("program.py", encoding="utf-8", errors="replace") as f:
    SOURCE = f.read()
with open("inputs.json", encoding="utf-8") as f:
    INPUTS = json.load(f)
with open("nonce.txt") as f:
    NONCE = f.read().strip()
os.remove("nonce.txt")
OUTPUT_LIMIT = int(sys.argv[1])
DENIED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "_winapi.")
DENIED = {"os.fork", "os.forkpty", "os.system", "os.kill", "os.killpg", "signal.pthread_kill", "sys._getframe",
          "resource.setrlimit", "resource.prlimit", "os.setuid", "os.setgid", "os.chroot", "pty.spawn",
          "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames"}
DENIED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "_socket", "socket"}
PATH_EVENTS = {"os.listdir", "os.scandir", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
               "os.chown", "os.truncate", "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.copyfile",
               "os.chdir", "glob.glob"}
LISTING = ("os.listdir", "os.scandir", "glob.glob", "os.chdir")
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path, roots):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return any(real == r or real.startswith(r + os.sep) for r in roots)

def refuse(event, detail=""):
    os.write(2, ("\n" + MARK + " " + event + " " + detail + "\n").encode())
    raise PermissionError("sandbox: " + event + " is not allowed")

def hook(event, args):
    if event in DENIED or event.startswith(DENIED_PREFIXES):
        refuse(event)
    if event == "import" and args[0].split(".")[0] in DENIED_IMPORTS:
        refuse(event, args[0])
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE)
        if not inside(path, (WORK,) if writes else READABLE):
            refuse(event, str(path)[:200])
    if event in PATH_EVENTS:
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg, READABLE if event in LISTING else (WORK,)):
                refuse(event, str(arg)[:200])

class Capped(io.StringIO):
    def write(self, text):
        if self.tell() + len(text) > OUTPUT_LIMIT:
            raise OSError(27, "File too large")
        return super().write(text)

def run(code, inputs, nonce, emit):
    for i, text in enumerate(inputs):
        out = Capped()
        sys.stdin, sys.stdout = io.StringIO(text), out
        status = "ok"
        try:
            exec(code, {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit as e:
            status = "ok" if e.code in (None, 0) else "error"
        except PermissionError as e:
            status = "blocked" if str(e).startswith("sandbox: ") else "error"
        except MemoryError:
            status = "memory"
        except OSError as e:
            status = "output_limit" if e.errno == 27 else "error"
        except BaseException:
            status = "error"
        finally:
            sys.stdin, sys.stdout = sys.__stdin__, sys.__stdout__
        emit((nonce + json.dumps({"i": i, "status": status, "out": out.getvalue()}) + "\n").encode())

builtins.exit = builtins.quit = sys.exit  # site's helpers, absent under -S
try:
    code = compile(SOURCE, "program.py", "exec")
except (SyntaxError, ValueError) as e:
    os.write(2, repr(e).encode())
    sys.exit(3)
sys.addaudithook(hook)
del f
run(code, INPUTS, NONCE, lambda data, write=os.write: write(1, data))
""".replace("MARK", repr(BLOCKED_MARK))


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 2.0  # CPU seconds (RLIMIT_CPU)
    wall_s: float = 5.0  # wall-clock seconds before the process group is killed
    memory_mb: int = 256  # address space (RLIMIT_AS)
    output_kb: int = 64  # stdout and stderr, each (RLIMIT_FSIZE)
    open_files: int = 32


@dataclass(frozen=True)
class TestRun:
    """One input's run. ``status``: ``ok``, ``error`` (an exception or non-zero exit), ``timeout`` (CPU or wall
    clock), ``memory``, ``output_limit``, ``blocked`` (a refused action was attempted)."""

    status: str
    stdout: str


@dataclass
class ProgramRun:
    """A program run on each of its inputs in one sandboxed process."""

    tests: list[TestRun]
    status: str  # the worst thing that happened: blocked > timeout > memory > output_limit > error > ok
    stderr: str
    seconds: float

    def passed(self, expected: list[str]) -> list[bool]:
        """Which tests printed their ``expected`` output (compared by :func:`normalise_output`)."""
        return [t.status == "ok" and normalise_output(t.stdout) == normalise_output(e) for t, e in zip(self.tests, expected)]


SEVERITY = ("blocked", "timeout", "memory", "output_limit", "error", "ok")


def python_executable() -> str:
    """The real interpreter behind a virtual environment's link (``-S`` leaves the venv's packages out)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _limit_child(limits: Limits, file_bytes: int) -> None:
    """In the child between fork and exec: its own session (one kill reaches every descendant), limits,
    and a network namespace with nothing in it when the OS lets us create one."""
    os.setsid()
    cpu = max(1, int(limits.cpu_s + 0.999))
    for what, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, limits.memory_mb << 20),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(what, (value, value))
    try:
        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)  # fails quietly without CAP_SYS_ADMIN
    except Exception:  # noqa: BLE001 - the audit hook still refuses sockets
        pass


def run_program(source: str, inputs: list[str], limits: Limits = Limits()) -> ProgramRun:
    """Run ``source`` once per stdin text of ``inputs`` in one sandboxed process (see the module's docstring);
    never raises for what the program does. Tests a timeout cut short are reported as ``timeout``."""
    import json
    import secrets

    work = tempfile.mkdtemp(prefix="rayrl-sandbox-")
    started = time.perf_counter()
    nonce = secrets.token_hex(16)
    try:
        for name, text in (("program.py", source), ("inputs.json", json.dumps(inputs)), ("nonce.txt", nonce)):
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(text)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "PYTHONIOENCODING": "utf-8"}
        limit = limits.output_kb << 10
        # every test's output is capped at ``limit`` characters inside; JSON may escape one into 6 bytes
        file_bytes = 6 * limit * max(1, len(inputs)) + 65536
        with open(os.devnull, "rb") as fin, open(os.path.join(work, "stdout.txt"), "wb") as fout, \
                open(os.path.join(work, "stderr.txt"), "wb") as ferr:  # fmt: skip
            proc = subprocess.Popen(
                [python_executable(), "-I", "-S", "-c", BOOTSTRAP, str(limit)], stdin=fin, stdout=fout, stderr=ferr,
                cwd=work, env=env, preexec_fn=lambda: _limit_child(limits, file_bytes), close_fds=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it left behind
                except ProcessLookupError:
                    pass
                proc.wait()
        stdout = _read(os.path.join(work, "stdout.txt"), file_bytes)
        stderr = _read(os.path.join(work, "stderr.txt"), limit)
        return ProgramRun(*_results(stdout, stderr, nonce, len(inputs), proc.returncode, timed_out),
                          seconds=time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _results(stdout: str, stderr: str, nonce: str, n: int, returncode: int, timed_out: bool
             ) -> tuple[list[TestRun], str, str]:  # fmt: skip
    import json

    found: dict[int, TestRun] = {}
    for line in stdout.splitlines():
        if line.startswith(nonce):
            try:
                record = json.loads(line[len(nonce):])
            except json.JSONDecodeError:  # cut short by the file-size limit: that test has no result
                continue
            found[record["i"]] = TestRun(record["status"], record["out"])
    # a test without a result line: the process ended during it (CPU, wall clock, memory, or a crash)
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        missing = "timeout"
    elif returncode == -signal.SIGXFSZ:
        missing = "output_limit"
    elif "MemoryError" in stderr:
        missing = "memory"
    else:
        missing = "error"
    tests = [found.get(i, TestRun(missing, "")) for i in range(n)]
    statuses = {t.status for t in tests} | ({"blocked"} if BLOCKED_MARK in stderr else set())
    return tests, next(s for s in SEVERITY if s in statuses or s == "ok"), stderr


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def normalise_output(text: str) -> str:
    """Output as program tasks compare it: trailing spaces of each line and trailing blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())
