"""Execution-based code rewards: run untrusted model programs against tests in a sandbox.

DeepSeek-R1 (Sec. 2.2.2) scores code by "compiler feedback": the program in the completion runs on
test cases. Model programs are untrusted, so each completion runs in its own short-lived process
behind independent layers. `sandbox_capabilities()` finds which layers work here by running the
sandbox once. A layer that was found (or asked for) but then fails to set up ends the run with
status `sandbox_error`, reward 0: the sandbox fails closed, never open.

Always on (any POSIX):
  * a fresh `python -I -S -B -u` (no site-packages, no PYTHON* variables), in a new session,
    killed as a process group at the wall-clock limit (counted from when the program starts);
  * a minimal environment (PATH, LANG, HOME = TMPDIR = the work dir): no inherited secrets;
  * a fresh, empty temporary work dir as cwd, removed afterwards;
  * rlimits: CPU seconds, address space, file size (this caps the stdout/stderr files, which live
    in the work dir; at most 2 KiB of each comes back), open files, processes, core = 0;
  * results on a dedicated pipe fd, each line tagged with a random nonce, so a program's prints
    cannot forge a pass. For (input, output) tests only the inputs enter the sandbox: the return
    value comes back as a literal and is compared here, so those expected outputs are never in
    reach of the program at all;
  * assert-string tests (MBPP, HumanEval) whose expected side is a literal (`assert f(2) == 4`,
    `assert abs(f(x) - y) < eps`, `assert f(x)`, ...: r1jax.assert_checks) are judged here too:
    the sandbox lets out only values whose types are exactly builtin literal types all the way
    down, as `repr` text, so an object whose `__eq__` or `__bool__` always says True, or an int
    subclass that overrides them, scores 0;
  * an audit hook (PEP 578), installed after setup: blocks sockets, subprocesses, fork/exec/kill,
    ctypes, frame and gc introspection (so `traceback.format_exc()` fails too; `sys._getframe`
    raises ValueError, which namedtuple/warnings fall back on), tracing, writes/renames/removals
    outside the work dir, and opening /proc or /dev. Defense in depth, NOT a boundary: pure
    Python can monkeypatch the stdlib helpers it uses, and a dir_fd-relative `os.open` skips the
    path check.
Linux with unprivileged user namespaces (util-linux `unshare`), "namespaces":
  * user + network namespace: only a loopback that is down; nothing on the host or the net;
  * PID namespace (--kill-child): host processes, the parent included, are invisible
    (`os.getppid()` is 0), and killing the sandbox's init kills all it started;
  * mount namespace with its own /proc, and "readonly_fs": every mount is made read-only
    (mount_setattr, Linux >= 5.12) except a bind of the work dir. Files stay READABLE with the
    caller's rights (as root: all of them). With no network and a capped stdout that is not
    logged there is no channel out, but do not run this where readable files must stay secret.
Linux x86_64, "seccomp": a BPF filter (with no_new_privs: needs no privilege) answers EPERM to
  fork, vfork, clone without CLONE_THREAD, execve, every socket, kill/tkill/tgkill of another pid,
  setsid/setpgid, ptrace, mount and the new mount API, unshare/setns, bpf, io_uring, keyrings and
  raising rlimits. This is what stops a fork bomb when the host user is root: RLIMIT_NPROC does
  not bind uid 0, even inside a user namespace that maps to it.
Not covered: CPU, memory-bandwidth and disk I/O contention between sandboxes (cgroups would be
  needed); kernel bugs; and for the asserts that still run inside the sandbox (both sides call
  into the program or name test variables, `assert f(x) == g(x)`; comparisons inside a
  comprehension; see r1jax.assert_checks): an object whose `__eq__` always returns True, a program
  that patches a module the tests import, or one that reaches the runner's memory in its own
  process (the hook makes this hard, not impossible). The tests do get the builtins as they were
  before the program ran. Without namespaces, RLIMIT_NPROC counts all of the user's processes, so
  a sandboxed program usually cannot start even a thread.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Optional, Sequence

import numpy as np

from r1jax import assert_checks


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits and layers of one sandboxed run. `None` layers are used when available."""
  timeout_s: float = 5.0           # wall clock from the moment the program starts loading
  memory_mb: int = 512             # RLIMIT_AS
  max_output_bytes: int = 1 << 20  # RLIMIT_FSIZE: stdout/stderr files and anything written
  max_open_files: int = 64
  max_processes: int = 16          # RLIMIT_NPROC (threads count too)
  startup_timeout_s: float = 20.0  # interpreter start + sandbox setup, before the program
  namespaces: Optional[bool] = None
  readonly_fs: Optional[bool] = None
  seccomp: Optional[bool] = None
  audit_hook: bool = True


@dataclasses.dataclass(frozen=True)
class RunResult:
  """passed[i]: test i passed. status: ok | timeout | no_program | load_error | test_setup_error |
  crashed (exited or was killed before finishing) | sandbox_error."""
  passed: tuple
  status: str
  detail: str = ""
  stdout: str = ""
  stderr: str = ""
  time_s: float = 0.0

  def reward(self, all_or_nothing: bool = False) -> float:
    if not self.passed:
      return 0.0
    if all_or_nothing:
      return float(all(self.passed))
    return sum(self.passed) / len(self.passed)


# ----------------------------------------------------------------------------------------------
# Child side. These four functions are shipped as source (`python -I -S -c`) and must only use
# the stdlib and their own locals.


def _child_mounts(workdir):
  """In the new user+mount namespace: make every mount read-only except the work dir."""
  import ctypes
  import os
  libc = ctypes.CDLL(None, use_errno=True)
  c = ctypes.c_long
  wd = os.fsencode(workdir)
  if libc.mount(None, b"/", None, ctypes.c_ulong(16384 | (1 << 18)), None):  # MS_REC|MS_PRIVATE
    raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
  if libc.mount(wd, wd, None, ctypes.c_ulong(4096 | 16384), None):  # MS_BIND|MS_REC
    raise OSError(ctypes.get_errno(), "bind mount of the work dir")

  class MountAttr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]

  for path, attr, flags in ((b"/", MountAttr(1, 0, 0, 0), 0x8000), (wd, MountAttr(0, 1, 0, 0), 0)):
    # mount_setattr(AT_FDCWD, path, AT_RECURSIVE?, {MOUNT_ATTR_RDONLY set/clear}, size)
    if libc.syscall(c(442), c(-100), path, c(flags), ctypes.byref(attr), c(ctypes.sizeof(attr))):
      raise OSError(ctypes.get_errno(), "mount_setattr " + path.decode())
  os.chdir(workdir)  # the old cwd is the directory under the bind mount
  if not os.statvfs("/").f_flag & os.ST_RDONLY or os.statvfs(workdir).f_flag & os.ST_RDONLY:
    raise OSError("read-only remount did not take effect")


def _child_seccomp(my_pid):
  """Install a BPF seccomp filter (x86_64): see the module docstring for what it denies."""
  import ctypes
  import os
  import struct
  if os.uname().machine != "x86_64":
    raise OSError("the seccomp filter is written for x86_64 syscall numbers")
  allow, eperm, enosys, kill = 0x7FFF0000, 0x00050001, 0x00050026, 0x80000000
  ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
  deny = (57, 58, 59, 322, 41, 53, 101, 112, 109, 165, 166, 155, 161, 167, 168, 169, 175, 176, 313,
          246, 320, 248, 249, 250, 272, 308, 298, 310, 311, 321, 323, 303, 304, 425, 426, 427, 424,
          434, 438, 428, 429, 430, 431, 432, 433, 442, 160, 163, 172, 173, 103, 179)
  prog = []

  def op(code, k, jt=0, jf=0):
    prog.append(struct.pack("HBBI", code, jt, jf, k))

  op(ld, 4), op(jeq, 0xC000003E, 1, 0), op(ret, kill)     # AUDIT_ARCH_X86_64 only
  op(ld, 0), op(jge, 0x40000000, 0, 1), op(ret, eperm)    # no x32 ABI
  for nr in deny:
    op(jeq, nr, 0, 1), op(ret, eperm)
  op(jeq, 435, 0, 1), op(ret, enosys)                     # clone3: glibc falls back to clone
  op(jeq, 56, 0, 4), op(ld, 16), op(jset, 0x10000, 0, 1), op(ret, allow), op(ret, eperm)  # threads
  op(jeq, 62, 2, 0), op(jeq, 200, 1, 0), op(jeq, 234, 0, 4)  # kill, tkill, tgkill: self only
  op(ld, 16), op(jeq, my_pid, 0, 1), op(ret, allow), op(ret, eperm)
  op(jeq, 302, 0, 6), op(ld, 32), op(jeq, 0, 0, 2), op(ld, 36), op(jeq, 0, 1, 0)  # prlimit64:
  op(ret, eperm), op(ret, allow)                                                # read-only
  op(ret, allow)

  class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

  buf = ctypes.create_string_buffer(b"".join(prog))
  fprog = Fprog(len(prog), ctypes.addressof(buf))
  libc = ctypes.CDLL(None, use_errno=True)
  u = ctypes.c_ulong
  if libc.prctl(38, u(1), u(0), u(0), u(0)):  # PR_SET_NO_NEW_PRIVS
    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
  if libc.prctl(22, u(2), ctypes.byref(fprog), u(0), u(0)):  # PR_SET_SECCOMP, MODE_FILTER
    raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def _child_main():
  """Read the spec, set up the layers, run the program and each test, report on the result fd."""
  import ast
  import builtins
  import json
  import os
  import resource
  import sys
  with open(sys.argv[1], encoding="utf-8") as fh:
    spec = json.load(fh)
  os.unlink(sys.argv[1])
  # Everything the runner uses after untrusted code starts is bound here, as locals: the program
  # can rebind builtins and module attributes, but not this frame's locals.
  write, exit_now, fd, nonce = os.write, os._exit, spec["result_fd"], spec["nonce"]
  _exec, _type, _repr, _len, _range, _base = exec, type, repr, len, range, BaseException
  literal_eval, workdir, show = ast.literal_eval, spec["workdir"], sys.__excepthook__

  def emit(line):
    write(fd, (nonce + " " + line + "\n").encode())

  def name_of(exc):
    return "".join(ch for ch in _type(exc).__name__[:40] if ch.isalnum() or ch == "_") or "?"

  layers = {}

  def set_up(layer, fn):
    # A layer that was asked for and fails stops the run (fail closed); the probe reports it.
    if spec[layer]:
      try:
        fn()
        layers[layer] = "ok"
      except Exception as e:  # pylint: disable=broad-except
        layers[layer] = f"{name_of(e)}: {e}"[:200]
        if not spec["probe"]:
          emit("sandbox_error " + layer)
          exit_now(3)

  set_up("readonly_fs", lambda: _child_mounts(workdir))
  os.chdir(workdir)
  for key, value in spec["limits"].items():  # before seccomp, which forbids raising them later
    hard = value + 1 if key == "RLIMIT_CPU" else value  # SIGXCPU first, then SIGKILL
    resource.setrlimit(getattr(resource, key), (value, hard))
  set_up("seccomp", lambda: _child_seccomp(os.getpid()))
  if spec["probe"]:
    try:
      pid = os.fork()
      if pid == 0:
        os._exit(0)
      os.waitpid(pid, 0)
      layers["fork_blocked"] = False
    except OSError:
      layers["fork_blocked"] = True
    layers["pid"], layers["uid"] = os.getpid(), os.getuid()
    emit("caps " + json.dumps(layers))
    exit_now(0)

  tests, program, entry = spec["tests"], spec["program"], spec["entry_point"]
  compiled = [compile(t["src"], f"<test {i}>", "exec") if t["kind"] == "code"
              else literal_eval(t["args"]) for i, t in enumerate(tests)]
  checks = [(compile(c["template"], f"<check {k}>", "eval"), c["modes"])
            for k, c in enumerate(spec["checks"])]
  try:  # compiled now: the program could rebind `compile` before the setup code runs
    setup = compile(spec["setup"], "<test setup>", "exec") if spec["setup"] else None
  except SyntaxError as e:
    emit("test_setup_error " + name_of(e))
    exit_now(0)
  pristine = dict(builtins.__dict__)  # what the tests see, whatever the program does to builtins
  plain = frozenset((int, float, complex, bool, str, bytes, type(None), list, tuple, dict, set,
                     frozenset))
  import collections
  import math
  # Read as the plain dicts they are (dict.items: C code over the table, none of the class's
  # methods), since MBPP's own solutions return them: `collections.Counter(xs) == {...}`.
  _id, _dict_items = id, dict.items
  # By id: `type(v) in plain` would ask the program's metaclass (__eq__, __hash__).
  plain_ids = frozenset(_id(t) for t in plain)
  dict_like_ids = frozenset(_id(t) for t in (collections.Counter, collections.OrderedDict,
                                             collections.defaultdict))
  check_globals = {name: pristine[name] for name in spec["check_names"]}
  check_globals.update({"_m_" + name: getattr(math, name) for name in spec["check_math"]})
  check_globals["__builtins__"] = {}
  _eval, _dict, _list, _tuple, _frozenset, _failed = (eval, dict, list, tuple, frozenset,
                                                     AssertionError)
  current = [-1]  # the test being run; -1 while the setup code runs

  def freeze(v, budget, depth=0):
    # A copy that only the runner holds, of exactly builtin literal types all the way down (no
    # subclass but dict_like's, no object whose methods the program wrote), or AssertionError. A
    # copy, so that nothing the program still reaches (a thread) can swap an element in before
    # `repr`.
    t = _type(v)
    budget[0] -= 1
    if (_id(t) not in plain_ids and _id(t) not in dict_like_ids) or budget[0] < 0 or depth > 100:
      raise _failed("not a plain literal value")
    if t is list:
      return [freeze(x, budget, depth + 1) for x in v]
    if t is tuple:
      return _tuple([freeze(x, budget, depth + 1) for x in v])
    if t is set:
      return {freeze(x, budget, depth + 1) for x in v}
    if t is frozenset:
      return _frozenset([freeze(x, budget, depth + 1) for x in v])
    if t is dict or _id(t) in dict_like_ids:
      return {freeze(k, budget, depth + 1): freeze(x, budget, depth + 1)
              for k, x in _dict_items(v)}
    return v  # int, float, complex, bool, str, bytes, None: immutable

  def plain_repr(value):
    # Only builtin literal types come back: a user object with __eq__ -> True cannot pass. repr
    # of these types is C code that the program cannot replace.
    try:
      text = _repr(freeze(value, [1 << 18]))
    except _base:
      return None
    return text if _len(text) <= 1 << 20 else None

  def check(slot, *thunks):
    # A rewritten assert (r1jax.assert_checks): evaluates the holes the template asks for, lets
    # out only plain values, and reports them; the caller judges them with its own copy of the
    # template. This side's verdict only stops a failing test here, as the assert would.
    code, modes = checks[slot]
    got = {}

    def hole(j):
      if j not in got:
        v = thunks[j]()
        if modes[j] == "iter" and _id(_type(v)) not in plain_ids:
          v = _list(v)
        got[j] = freeze(v, [1 << 18])
      return got[j]

    holds = _eval(code, _dict(check_globals, _h=hole))
    text = _repr(got)
    if _len(text) > 1 << 20:
      raise _failed("value too large")
    emit(f"chk {current[0]} {slot} {text}")
    if not holds:
      raise _failed()

  if spec["audit_hook"]:
    sys.addaudithook(_make_audit_hook(workdir))
    for mod in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
      del sys.modules[mod]
  namespace = {"__name__": "__solution__"}
  emit("start")
  try:
    _exec(compile(program, "<solution>", "exec"), namespace)
  except _base as e:
    show(_type(e), e, e.__traceback__)  # C-level printing: no audited frame access
    emit("load_error " + name_of(e))
    exit_now(0)
  # The tests see the program's names, except those that shadow a builtin (`sorted = ...`), and the
  # builtins as they were before the program ran.
  scope = {k: v for k, v in namespace.items() if k not in pristine or k == entry}
  scope["__builtins__"] = pristine
  scope[spec["check_fn"]] = check
  if setup is not None:
    try:
      _exec(setup, scope)
    except _base as e:
      emit("test_setup_error " + name_of(e))
      exit_now(0)
  for i in _range(_len(tests)):
    current[0] = i
    try:
      if tests[i]["kind"] == "code":
        _exec(compiled[i], scope)
        emit(f"pass {i}")
      else:
        text = plain_repr(namespace[entry](*compiled[i]))
        emit(f"io {i} {text}" if text is not None else f"fail {i} NotALiteral")
    except _base as e:
      emit(f"fail {i} {name_of(e)}")
  emit("done")
  exit_now(0)


def _make_audit_hook(workdir):
  """PEP 578 hook: defense in depth against the obvious escapes (see the module docstring)."""
  import os
  blocked = frozenset((
      "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
      "os.killpg", "signal.pthread_kill", "subprocess.Popen", "pty.spawn", "os.chdir",
      "os.chroot", "sys.settrace", "sys.setprofile", "sys.addaudithook", "sys._current_frames",
      "sys._current_exceptions", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
      "resource.setrlimit", "resource.prlimit", "mmap.__new__"))
  path_events = frozenset((
      "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.link", "os.symlink", "os.truncate",
      "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.copytree",
      "shutil.move", "shutil.copymode", "shutil.copystat", "sqlite3.connect"))
  blocked_modules = frozenset(("ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl",
                               "subprocess", "_posixsubprocess", "multiprocessing",
                               "_multiprocessing", "pty"))
  realpath, join, fsdecode, write_flags = (os.path.realpath, os.path.join, os.fsdecode,
                                           os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT)
  _isinstance, _any = isinstance, any  # bound now: the program may rebind the builtins
  inside = workdir.rstrip("/") + "/"
  readable_dev = frozenset(("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"))

  def resolve(path):
    return realpath(join(workdir, fsdecode(path)))

  def hook(event, args):
    if event in blocked or event.startswith(("socket.", "ctypes.")):
      raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "object.__getattr__" and args[1] in ("tb_frame", "gi_frame", "cr_frame",
                                                      "ag_frame"):
      raise PermissionError("sandbox: frame access is not allowed")
    if event == "sys._getframe":  # ValueError: what namedtuple/warnings catch and fall back on
      raise ValueError("sandbox: frame access is not allowed")
    if event == "import" and args[0].partition(".")[0] in blocked_modules:
      raise ImportError("sandbox: module " + args[0] + " is not allowed")
    if event == "open" and _isinstance(args[0], (str, bytes)):
      full = resolve(args[0])
      mode, flags = args[1] or "", args[2] or 0
      if (flags & write_flags or _any(ch in mode for ch in "wax+")) and not (
          full + "/").startswith(inside):
        raise PermissionError("sandbox: writing outside the work dir")
      if full.startswith("/proc") or (full.startswith("/dev/") and full not in readable_dev):
        raise PermissionError("sandbox: " + full + " is not allowed")
    if event in path_events:
      for arg in args:
        if _isinstance(arg, (str, bytes)) and not (resolve(arg) + "/").startswith(inside):
          raise PermissionError("sandbox: " + event + " outside the work dir")
      # A dir_fd would make the path relative to a directory the check above never saw.
      if event not in ("os.mkdir", "os.chmod", "os.chown", "os.truncate") and _any(
          _isinstance(arg, int) and arg >= 0 for arg in args[1:]):
        raise PermissionError("sandbox: " + event + " with a directory fd")

  return hook


_RUNNER = "\n".join(textwrap.dedent(inspect.getsource(f)) for f in (
    _child_mounts, _child_seccomp, _make_audit_hook, _child_main)) + "\n_child_main()\n"


# ----------------------------------------------------------------------------------------------
# Parent side.

_UNSHARE_ARGS = ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                 "--mount-proc")


def _argv(namespaces: bool) -> list:
  python = [sys.executable, "-I", "-S", "-B", "-u", "-c", _RUNNER]
  return [shutil.which("unshare"), *_UNSHARE_ARGS, *python] if namespaces else python


def _spawn(spec: dict, namespaces: bool, config: SandboxConfig, on_line) -> tuple:
  """Run the runner on `spec`; call on_line(kind, rest) for each nonce-tagged result line.

  Returns (status in {"done", "timeout", "flood"}, stdout head, stderr head, seconds).
  """
  t0 = time.monotonic()
  workdir = tempfile.mkdtemp(prefix="r1jax-sandbox-")
  read_fd, write_fd = os.pipe()
  proc, status = None, "done"
  nonce = secrets.token_hex(16)
  try:
    spec_path = os.path.join(workdir, ".spec.json")
    with open(spec_path, "w", encoding="utf-8") as fh:
      json.dump(dict(spec, result_fd=write_fd, nonce=nonce, workdir=workdir), fh)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    with open(os.path.join(workdir, "stdout"), "wb") as out, \
         open(os.path.join(workdir, "stderr"), "wb") as err:
      proc = subprocess.Popen(_argv(namespaces) + [spec_path], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=err, cwd=workdir, env=env, pass_fds=(write_fd,),
                              start_new_session=True)
    os.close(write_fd)
    write_fd = -1
    deadline, buf, total = t0 + config.startup_timeout_s, b"", 0
    poller = select.poll()  # not select.select: fds above 1024 happen in big processes
    poller.register(read_fd, select.POLLIN)
    while True:
      if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
        status = "timeout"
        break
      chunk = os.read(read_fd, 65536)
      total += len(chunk)
      if not chunk:
        break
      if total > 16 * (1 << 20):  # only the runner can write here, but bound it anyway
        status = "flood"
        break
      *lines, buf = (buf + chunk).split(b"\n")
      for line in lines:
        parts = line.decode("utf-8", "replace").split(" ", 2)
        if len(parts) >= 2 and secrets.compare_digest(parts[0], nonce):
          if parts[1] == "start":  # the program's time starts now, not at interpreter start
            deadline = time.monotonic() + config.timeout_s
          on_line(parts[1], parts[2] if len(parts) > 2 else "")
    return status, _head(workdir, "stdout"), _head(workdir, "stderr"), time.monotonic() - t0
  finally:
    if proc is not None:
      try:  # before wait(): the unreaped leader keeps the group id from being reused
        os.killpg(proc.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
      proc.wait()
    for fd in (read_fd, write_fd):
      if fd >= 0:
        os.close(fd)
    shutil.rmtree(workdir, onerror=_force_remove)


def _head(workdir: str, name: str, limit: int = 2048) -> str:
  try:
    with open(os.path.join(workdir, name), "rb") as fh:
      return fh.read(limit).decode("utf-8", "replace")
  except OSError:
    return ""


def _force_remove(func, path, _):
  # A program may chmod 000 its own files or dirs; the owner can always chmod them back.
  try:
    os.chmod(os.path.dirname(path), 0o700)
    os.chmod(path, 0o700)
    func(path)
  except OSError:
    pass


def _limits(config: SandboxConfig) -> dict:
  return {"RLIMIT_CPU": int(math.ceil(config.timeout_s)) + 1,
          "RLIMIT_AS": config.memory_mb << 20, "RLIMIT_FSIZE": config.max_output_bytes,
          "RLIMIT_NOFILE": config.max_open_files, "RLIMIT_NPROC": config.max_processes,
          "RLIMIT_CORE": 0}


@functools.lru_cache(maxsize=None)
def sandbox_capabilities() -> dict:
  """Which isolation layers work on this machine, found by running the sandbox once.

  Returns {"namespaces", "readonly_fs", "seccomp", "fork_blocked", "audit_hook", "rlimits": bool,
  "uid": host uid, "detail": {layer: "ok" or why it failed}}.
  """
  config = SandboxConfig(startup_timeout_s=30.0)
  spec = {"probe": True, "limits": _limits(config), "audit_hook": False, "tests": [],
          "program": "", "setup": "", "entry_point": ""}
  caps = {"namespaces": False, "readonly_fs": False, "seccomp": False, "fork_blocked": False,
          "audit_hook": True, "rlimits": True, "uid": os.getuid(), "detail": {}}
  candidates = [True, False] if sys.platform == "linux" and shutil.which("unshare") else [False]
  for namespaces in candidates:
    found = {}

    def on_line(kind, rest, found=found):
      if kind == "caps":
        found.update(json.loads(rest))

    status, _, stderr, _ = _spawn(dict(spec, readonly_fs=namespaces, seccomp=True), namespaces,
                                  config, on_line)
    if found:
      caps.update(namespaces=namespaces, readonly_fs=found.get("readonly_fs") == "ok",
                  seccomp=found.get("seccomp") == "ok", fork_blocked=found["fork_blocked"],
                  detail=found)
      return caps
    caps["detail"][f"namespaces={namespaces}"] = f"{status}: {stderr.strip()[-300:]}"
  raise RuntimeError(f"the sandbox runner does not start on this machine: {caps['detail']}")


def _resolve_layers(config: SandboxConfig) -> dict:
  caps = sandbox_capabilities()
  layers = {}
  for layer in ("namespaces", "readonly_fs", "seccomp"):
    want = getattr(config, layer)
    if want and not caps[layer]:
      raise RuntimeError(f"SandboxConfig.{layer}=True but it is unavailable here: {caps['detail']}")
    layers[layer] = caps[layer] if want is None else want
  layers["readonly_fs"] = layers["readonly_fs"] and layers["namespaces"]
  return layers


def _encode_tests(tests: Sequence, where: str, checks: list) -> tuple:
  """Split tests into what the sandbox sees (code with its asserts rewritten into `checks`, or only
  the inputs) and the expected outputs."""
  wire, expected = [], []
  for i, test in enumerate(tests):
    if isinstance(test, str):
      wire.append({"kind": "code", "src": assert_checks.rewrite(test, checks)})
      expected.append(None)
    elif isinstance(test, (tuple, list)) and len(test) == 2:
      args = test[0] if isinstance(test[0], tuple) else (test[0],)
      for value in (args, test[1]):
        try:
          ok = ast.literal_eval(repr(value)) == value
        except (ValueError, SyntaxError):
          ok = False
        if not ok:
          raise ValueError(f"{where} test {i}: {value!r} is not a Python literal")
      wire.append({"kind": "io", "args": repr(args)})
      expected.append(test[1])
    else:
      raise ValueError(f"{where} test {i}: expected an assert string or an (input, output) pair, "
                       f"got {test!r}")
  return wire, expected


def _values_equal(got: Any, want: Any) -> bool:
  """Equality on literals with exact container types; int and float compare numerically."""
  numbers = (int, float)
  if type(got) in numbers and type(want) in numbers:
    return got == want or (isinstance(got, float) or isinstance(want, float)) and math.isclose(
        got, want, rel_tol=1e-9, abs_tol=1e-12)
  if type(got) is not type(want):
    return False
  if isinstance(want, (list, tuple)):
    return len(got) == len(want) and all(_values_equal(a, b) for a, b in zip(got, want))
  if isinstance(want, dict):
    return got.keys() == want.keys() and all(_values_equal(got[k], want[k]) for k in want)
  return got == want


def run_tests(program: str, tests: Sequence, *, entry_point: str = "", setup_code: str = "",
              config: Optional[SandboxConfig] = None) -> RunResult:
  """Run `program` in the sandbox, then each test separately.

  tests: assert strings (exec'd in the program's namespace after `setup_code`), or
    (input, output) pairs: `entry_point(*input)` (a non-tuple input is one argument) must return
    a literal equal to `output`. Tests that did not report before a timeout or crash fail.
  """
  config = config or SandboxConfig()
  checks = []
  wire, expected = _encode_tests(tests, "run_tests", checks)
  if any(e is not None for e in expected) and not entry_point:
    raise ValueError("run_tests: (input, output) tests need an entry_point")
  setup_code = assert_checks.rewrite(setup_code, checks) if setup_code else ""
  layers = _resolve_layers(config)
  spec = {"probe": False, "limits": _limits(config), "audit_hook": config.audit_hook,
          "readonly_fs": layers["readonly_fs"], "seccomp": layers["seccomp"], "tests": wire,
          "program": program, "setup": setup_code, "entry_point": entry_point,
          "checks": [dataclasses.asdict(c) for c in checks], "check_fn": assert_checks.CHECK_FN,
          "check_names": sorted(assert_checks.NAMES),
          "check_math": sorted(assert_checks.MATH_NAMES)}
  codes = [c.code() for c in checks]
  passed = [False] * len(wire)
  events, refuted = {}, set()  # refuted: tests (-1: the setup) with a check that failed here

  def on_line(kind, rest):
    if kind == "chk":
      index, slot, text = (rest.split(" ", 2) + ["", ""])[:3]
      try:
        holds = assert_checks.verdict(codes[int(slot)], assert_checks.parse_value(text))
      except (ValueError, IndexError, SyntaxError, TypeError, MemoryError, RecursionError):
        holds = False
      if not holds:
        refuted.add(index)
    elif kind in ("pass", "fail", "io"):
      index, _, value = rest.partition(" ")
      i = int(index) if index.isdigit() else -1
      if 0 <= i < len(passed) and i not in events:
        events[i] = kind
        if kind == "pass":
          passed[i] = str(i) not in refuted and "-1" not in refuted
        elif kind == "io":
          try:
            passed[i] = _values_equal(ast.literal_eval(value), expected[i])
          except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            passed[i] = False
    elif kind not in events:
      events[kind] = rest

  status, stdout, stderr, seconds = _spawn(spec, layers["namespaces"], config, on_line)
  for kind in ("sandbox_error", "load_error", "test_setup_error"):
    if kind in events:
      status, detail = kind, events[kind]
      break
  else:
    detail = ""
    if status == "done":
      status = "ok" if "done" in events else "crashed"
    elif status == "flood":
      status = "crashed"
  return RunResult(tuple(passed), status, detail, stdout, stderr, seconds)


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> Optional[str]:
  """The program in a completion: the last <answer>...</answer> (a ```python block inside it if
  any), else the last ```python block. None when there is none or it is empty."""
  answers = _ANSWER.findall(completion)
  text = answers[-1] if answers else None
  fences = _FENCE.findall(text if text is not None else completion)
  if fences:
    text = fences[-1]
  if text is None:
    return None
  text = textwrap.dedent(text).strip("\n").rstrip()
  return text or None


def _field(problem, name: str, default=None):
  if isinstance(problem, dict):
    return problem.get(name, default)
  return getattr(problem, name, default)


def build_program(code: str, problem) -> str:
  """Insert the extracted code into the problem's template ("{program}" by default); a HumanEval
  completion that is only a function body gets the problem's prompt (meta["prompt"]) in front."""
  template = _field(problem, "program_template", None) or "{program}"
  program = template.replace("{program}", code)
  entry = _field(problem, "entry_point", "") or ""
  prompt = (_field(problem, "meta", None) or {}).get("prompt", "")
  if prompt and entry and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", program):
    # A function body: extract_program dedented it, so indent it like the prompt's docstring.
    last = [line for line in prompt.splitlines() if line.strip()][-1]
    indent = last[:len(last) - len(last.lstrip())] or "    "
    if not program.startswith((" ", "\t")):
      program = textwrap.indent(program, indent)
    program = prompt.rstrip("\n") + "\n" + program
  return program


def run_completion(completion: str, problem, config: Optional[SandboxConfig] = None) -> RunResult:
  """Extract, build and run one completion against `problem` (tests, entry_point, setup_code,
  program_template, meta: attributes or dict keys)."""
  tests = _field(problem, "tests", None)
  if not tests:
    raise ValueError(f"problem has no tests: {problem!r}"[:300])
  code = extract_program(completion)
  if code is None:
    return RunResult(tuple([False] * len(tests)), "no_program")
  return run_tests(build_program(code, problem), tests, config=config,
                   entry_point=_field(problem, "entry_point", "") or "",
                   setup_code=_field(problem, "setup_code", "") or "")


def code_reward(completion: str, problem, *, all_or_nothing: bool = False,
                config: Optional[SandboxConfig] = None) -> float:
  """Accuracy reward for code (R1 Sec. 2.2.2): the share of tests passed, or 1/0 for all."""
  return run_completion(completion, problem, config).reward(all_or_nothing)


def run_code_batch(completions: Sequence[str], problems: Sequence, *,
                   config: Optional[SandboxConfig] = None,
                   max_workers: Optional[int] = None) -> list:
  """run_completion over a batch, `max_workers` (default os.cpu_count()) sandboxes at a time."""
  if len(completions) != len(problems):
    raise ValueError(f"completions ({len(completions)}) and problems ({len(problems)}) differ in "
                     "length; repeat each problem once per completion of its group")
  sandbox_capabilities()  # probe once, before the threads start
  workers = max(1, min(max_workers or os.cpu_count() or 1, max(1, len(completions))))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(lambda cp: run_completion(cp[0], cp[1], config),
                         zip(completions, problems)))


def score_code_batch(completions: Sequence[str], problems: Sequence, *,
                     timeout_s: Optional[float] = None, all_or_nothing: bool = False,
                     max_workers: Optional[int] = None,
                     config: Optional[SandboxConfig] = None) -> tuple:
  """Rewards [B] float32 for B completions and stats: time_s, completions_per_s, timeouts,
  errors (load/test-setup errors, crashes, sandbox errors), no_program, mean_reward."""
  config = config or SandboxConfig()
  if timeout_s is not None:
    config = dataclasses.replace(config, timeout_s=timeout_s)
  t0 = time.monotonic()
  results = run_code_batch(completions, problems, config=config, max_workers=max_workers)
  seconds = time.monotonic() - t0
  rewards = np.array([r.reward(all_or_nothing) for r in results], np.float32)
  statuses = [r.status for r in results]
  stats = {"time_s": seconds, "completions_per_s": len(results) / max(seconds, 1e-9),
           "timeouts": statuses.count("timeout"), "no_program": statuses.count("no_program"),
           "errors": sum(s not in ("ok", "timeout", "no_program") for s in statuses),
           "mean_reward": float(rewards.mean()) if len(rewards) else 0.0}
  return rewards, stats
