"""kaizen's code-execution harness: runs untrusted solution code against unit tests.

Started by kaizen's sandbox (`envs/src/sandbox.rs`) as `python3 -I -S -B harness.py` in a fresh
temporary directory that holds `solution.py` (the model's code) and `tests.json` (a list of
test statements, usually `assert f(x) == y`), with the rlimits as arguments:

    harness.py CPU_SECONDS ADDRESS_SPACE_BYTES FILE_BYTES

It sets them first (CPU time, address space, file size, no core dumps, 64 open files, no new
processes), before it reads anything of the solution. The parent does not set them between
fork and exec, so that it can start the interpreter with posix_spawn (vfork) instead of
forking its own address space: an actor holding a model is gigabytes, and copying its page
tables cost ~80 ms per execution. It writes one JSON object to `result.json`:

    {"loaded": bool, "load_error": str|null, "tests": [{"test", "passed", "error"}...]}

Before the untrusted code runs, a PEP 578 audit hook forbids process creation, sockets,
ctypes/dlopen, signals to other processes, and writes or deletions outside the directory. A
forbidden operation prints `KAIZEN_SANDBOX_FORBIDDEN <event>` to stderr and exits at once with
status 97, so `except:` in the solution cannot swallow it. Audit hooks are a tripwire, not a
security boundary (PEP 578 says so): the rlimits and the process-group kill bound what gets
past them.
"""

import ast
import errno
import json
import os
import resource
import sys

LIMITS_EXIT = 95


def _set_limits(argv):
    """The rlimits of the run (see the module's doc); a failure ends it with LIMITS_EXIT."""
    try:
        cpu, memory, file_size = (int(a) for a in argv)
        limits = [
            # The hard CPU limit one second later: SIGXCPU at the soft one, SIGKILL at the hard.
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_AS, memory, memory),
            (resource.RLIMIT_FSIZE, file_size, file_size),
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_NOFILE, 64, 64),
            (resource.RLIMIT_NPROC, 0, 0),
        ]
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
    except Exception as e:  # noqa: BLE001 - any failure means the limits do not hold
        os.write(2, ("KAIZEN_SANDBOX_LIMITS %s: %s\n" % (type(e).__name__, e)).encode())
        os._exit(LIMITS_EXIT)


_set_limits(sys.argv[1:])
ROOT = os.path.realpath(os.getcwd())
FILE_SIZE_EXIT = 96
FORBIDDEN_EXIT = 97
MEMORY_EXIT = 98
MAX_REPR = 200

_result_file = open(os.path.join(ROOT, "result.json"), "w")  # opened before the hook

_FORBIDDEN_EVENTS = (
    "os.system", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
    "os.kill", "os.killpg", "os.putenv", "os.unsetenv", "os.chdir", "os.chmod", "os.chown",
    "subprocess.Popen", "pty.spawn", "ctypes.", "_ctypes.", "socket.", "signal.",
    "resource.setrlimit",
)
_PATH_EVENTS = {
    "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.link", "os.symlink",
    "os.truncate", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime",
}


def _inside(path):
    try:
        if isinstance(path, int):
            return True  # an already-open descriptor
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return real == ROOT or real.startswith(ROOT + os.sep)


def _forbid(event):
    try:
        os.write(2, ("KAIZEN_SANDBOX_FORBIDDEN %s\n" % event).encode())
    finally:
        os._exit(FORBIDDEN_EXIT)


def _hook(event, args):
    if event.startswith(_FORBIDDEN_EVENTS):
        _forbid(event)
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        )
        if writing and not _inside(path):
            _forbid("open for writing outside the sandbox directory: %r" % (path,))
    elif event in _PATH_EVENTS:
        for p in args[:2]:
            if isinstance(p, (str, bytes, os.PathLike)) and not _inside(p):
                _forbid("%s outside the sandbox directory: %r" % (event, p))


class _Fatal(Exception):
    """A broken limit: ends the run, whatever the solution catches."""

    def __init__(self, status, marker):
        super().__init__(marker)
        self.status = status
        self.marker = marker


def _check_fatal(error):
    """Raises _Fatal for a broken limit: memory (MemoryError) or file size (EFBIG: Python
    ignores SIGXFSZ, so the write fails instead)."""
    if isinstance(error, MemoryError):
        raise _Fatal(MEMORY_EXIT, "KAIZEN_SANDBOX_MEMORY")
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        raise _Fatal(FILE_SIZE_EXIT, "KAIZEN_SANDBOX_FILE_SIZE")


def _short(value):
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."


def _describe(error):
    name = type(error).__name__
    message = str(error)
    if len(message) > MAX_REPR:
        message = message[:MAX_REPR] + "..."
    return "%s: %s" % (name, message) if message else name


def _run_test(test, namespace):
    """Runs one test statement; on a failed `assert a == b`, says what `a` was."""
    try:
        tree = ast.parse(test, mode="exec")
    except SyntaxError as e:
        return False, "the test does not parse: %s" % e
    try:
        exec(compile(tree, "<test>", "exec"), namespace)
        return True, None
    except AssertionError:
        node = tree.body[0] if tree.body else None
        if (
            isinstance(node, ast.Assert)
            and isinstance(node.test, ast.Compare)
            and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)
        ):
            try:
                got = eval(compile(ast.Expression(node.test.left), "<test>", "eval"), namespace)
                want = eval(
                    compile(ast.Expression(node.test.comparators[0]), "<test>", "eval"), namespace
                )
                return False, "%s returned %s, expected %s" % (
                    ast.unparse(node.test.left), _short(got), _short(want))
            except BaseException as e:  # noqa: BLE001 - the solution's own failure
                _check_fatal(e)
                return False, _describe(e)
        return False, "AssertionError"
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt included
        _check_fatal(e)
        return False, _describe(e)


def main():
    with open(os.path.join(ROOT, "tests.json")) as f:
        tests = json.load(f)
    with open(os.path.join(ROOT, "solution.py")) as f:
        source = f.read()
    sys.addaudithook(_hook)
    namespace = {"__name__": "solution"}
    result = {"loaded": True, "load_error": None, "tests": []}
    try:
        try:
            exec(compile(source, "solution.py", "exec"), namespace)
        except BaseException as e:  # noqa: BLE001
            _check_fatal(e)
            result["loaded"] = False
            result["load_error"] = _describe(e)
        for test in tests:
            if result["loaded"]:
                passed, error = _run_test(test, namespace)
            else:
                passed, error = False, result["load_error"]
            result["tests"].append({"test": test, "passed": passed, "error": error})
    except _Fatal as f:
        os.write(2, (f.marker + "\n").encode())
        os._exit(f.status)
    except MemoryError:
        os.write(2, b"KAIZEN_SANDBOX_MEMORY\n")
        os._exit(MEMORY_EXIT)
    sys.stdout.flush()
    _result_file.write(json.dumps(result))
    _result_file.flush()
    os._exit(0)


main()
