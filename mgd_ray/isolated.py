"""Run a function in a short-lived child process, so that the driver never imports torch.

The driver lives for the whole job on the head node (on a cluster with a 0-CPU head, next to
Ray's own processes), so its memory is the one that must stay small. What it needs from the
model stack is a handful of facts — the generator's configs as diffusers would load them
(``models.read_generator_info``), the teacher's presence, FLOP counts for the plan — and getting
them means importing diffusers, hence torch: ~600 MB of resident memory with the CUDA build of
torch 2.14 that real clusters run, held until the driver exits. Instead such a call runs in a
child interpreter (``python -c 'from mgd_ray.isolated import serve; serve()'``) that returns a
picklable result; the driver ends it (``shutdown``) once the preflight and the plan are done.
The child runs in the caller's environment: a call made after the environment changed (another
``HF_HOME``, ``HF_HUB_OFFLINE``) starts a new child, since libraries read it when imported.

Not ``multiprocessing``: its ``spawn`` start re-runs the parent's main script in the child,
so a user's script that calls ``run_job`` without a ``__main__`` guard would run its job again
there. The child here runs only this module's loop: calls and results travel as length-prefixed
pickles over its stdin / stdout (our own process, nothing from a file or the network), its
stdout is moved to stderr for anything it prints, and its exceptions reach the caller unchanged
(``ModelError`` stays ``ModelError``). A child that dies (out of memory, a signal) is a
RuntimeError naming its exit code.

``MGD_RAY_IN_PROCESS=1`` runs the calls in the caller's process instead (for debugging).
"""

from __future__ import annotations

import atexit
import os
import pickle
import resource
import struct
import subprocess
import sys
import threading

_HEADER = struct.Struct("<Q")
_lock = threading.Lock()
_child: subprocess.Popen | None = None
_child_env: dict | None = None           # the environment the child was started with


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


def _start() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from mgd_ray.isolated import serve; serve()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in the child process (``fn`` a module-level function, arguments
    and result picklable). The child starts on the first call and serves the next ones."""
    if os.environ.get("MGD_RAY_IN_PROCESS") == "1":
        return fn(*args, **kwargs)
    global _child, _child_env
    with _lock:
        env = dict(os.environ)
        if _child is not None and (_child.poll() is not None or env != _child_env):
            _stop(_child)                # gone, or started under another environment (HF_HOME, ...)
            _child = None
        if _child is None:
            _child, _child_env = _start(), env
        child = _child
        _send(child.stdin, (fn, args, kwargs))
        reply = _receive(child.stdout)
        if reply is None:
            code = child.wait()
            _child = None
            raise RuntimeError(f"the helper process that runs {fn.__module__}.{fn.__qualname__} outside the driver "
                               f"ended without an answer (exit code {code}; a negative code is the signal that "
                               f"stopped it, e.g. -9 when the machine ran out of memory)")
    ok, value = reply
    if ok:
        return value
    raise value


def shutdown() -> None:
    """End the child (the next ``call`` starts a new one)."""
    global _child
    with _lock:
        child, _child = _child, None
    if child is not None:
        _stop(child)


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    try:
        child.stdin.close()                # end of input: serve() returns
        child.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        child.kill()
        child.wait()


def children_peak_rss_mb() -> float:
    """The largest peak RSS of this process's ended children (``ru_maxrss`` of
    ``RUSAGE_CHILDREN``), in MB: what an isolated call cost, once its child has exited."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def serve() -> None:
    """The child's loop: read a call, answer (True, result) or (False, exception), until stdin ends."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                          # what the called code prints goes to stderr, not into the replies
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    while True:
        msg = _receive(inp)
        if msg is None:
            return
        fn, args, kwargs = msg
        try:
            reply = (True, fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - the caller re-raises it
            reply = (False, e)
        try:
            _send(out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:   # an unpicklable result or exception
            _send(out, (False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} (not picklable: {e})")))


atexit.register(shutdown)
