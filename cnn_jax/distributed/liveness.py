"""Which process of a multi-process run was lost: heartbeats in the
coordination service's key-value store.

A collective with a killed process fails in the others within about a
second, but its error names only a socket ("Gloo AllGather failed: Read
error [127.0.0.1]:6017: Connection reset by peer"); a process waiting in a
barrier of the coordination service (Orbax's saves) is not woken at all
until the service misses the lost process's heartbeats for
multihost.HEARTBEAT_TIMEOUT_S, and then JAX ends every process from C++,
without our message. So every process runs a thread (`start`) that writes a
counter under 'cnn_jax/heartbeat/<i>' every HEARTBEAT_S, and:

- a process whose collective failed (`failure_message`) writes
  'cnn_jax/noticed/<i>', watches the counters for WATCH_S, and names as lost
  every process that neither advanced its counter nor noticed the failure;
- the thread itself reads the counters every CHECK_S: when one has not
  moved for STALE_S (less than the service's timeout) and its process has
  neither noticed a failure nor finished ('cnn_jax/finished/<i>', written at
  a normal exit), it prints the same kind of line naming it and ends this
  process (exit status 1): a process blocked anywhere still ends in time.

Process 0 hosts the coordination service: it waits (at most WAIT_OTHERS_S)
for the other survivors to finish their own look before it exits, since
its exit ends theirs. If process 0 itself dies, JAX ends the others at once
from C++ ("... the leader task was preempted/died ..."): nothing here can
run then. Every check reads all N counters: N^2 small reads per CHECK_S at
the coordinator, fine for tens of processes.
"""

import atexit
import os
import sys
import threading
import time

import jax
# The jax.distributed client (the key-value store); JAX has no public
# accessor (jax.experimental.multihost_utils uses the same).
from jax._src import distributed

HEARTBEAT_S = 0.5
CHECK_S = 2.0
# Long enough for a live process's counter to advance a few times.
WATCH_S = 2.5
# A process with this long without a heartbeat is lost (must stay below
# multihost.HEARTBEAT_TIMEOUT_S, when JAX ends every process itself).
STALE_S = 15.0
WAIT_OTHERS_S = 10.0
_PREFIX = "cnn_jax/"

_thread = None
_stop = threading.Event()
_reporting = threading.Lock()  # one failure line per process


def _client():
  return distributed.global_state.client


def _values(client, folder):
  return {int(key.rsplit("/", 1)[-1]): value
          for key, value in client.key_value_dir_get(f"{_PREFIX}{folder}/")}


def _beat(client, index, count):
  """The heartbeat thread: writes this process's counter, and every
  CHECK_S looks for a process whose counter stopped (then ends this one)."""
  beats, last_check = 0, time.monotonic()
  seen = {p: (None, last_check) for p in range(count)}  # value, since
  while not _stop.is_set():
    try:
      client.key_value_set(f"{_PREFIX}heartbeat/{index}", str(beats),
                           allow_overwrite=True)
      beats += 1
      now = time.monotonic()
      if now - last_check >= CHECK_S:
        last_check = now
        for p, value in _values(client, "heartbeat").items():
          if seen[p][0] != value:
            seen[p] = (value, now)
        stale = [p for p, (_, since) in seen.items()
                 if p != index and now - since > STALE_S]
        if stale:
          gone = set(_values(client, "finished")) | set(
              _values(client, "noticed"))
          stale = [p for p in stale if p not in gone]
        if stale:
          _report_and_exit(f"lost {_named(stale)} of {count} (no heartbeat "
                           f"for {STALE_S:.0f} s)", stale)
    except Exception:  # pylint: disable=broad-except
      return  # the coordination service is gone: nothing left to tell
    _stop.wait(HEARTBEAT_S)


def _named(processes):
  return (f"process{'es' if len(processes) > 1 else ''} "
          + ", ".join(str(p) for p in processes))


def _report_and_exit(what, lost):
  """From the heartbeat thread: the failure line, then exit status 1 (after
  the other survivors, in process 0)."""
  if not _reporting.acquire(blocking=False):
    return  # the main thread is reporting a failure already
  client, me = _client(), jax.process_index()
  client.key_value_set(f"{_PREFIX}looked/{me}", "1", allow_overwrite=True)
  print(f"error: process {me} of {jax.process_count()}: {what}",
        file=sys.stderr, flush=True)
  _wait_for_survivors(client, lost)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


def _wait_for_survivors(client, lost):
  """In process 0 (which hosts the service): until every process not in
  `lost` has looked (at most WAIT_OTHERS_S)."""
  if jax.process_index() != 0:
    return
  deadline = time.time() + WAIT_OTHERS_S
  survivors = set(range(jax.process_count())) - set(lost)
  while (not survivors <= set(_values(client, "looked"))
         and time.time() < deadline):
    time.sleep(0.1)


def start():
  """Starts this process's heartbeat thread (after jax.distributed is up;
  once; a no-op in a single-process run). It stops at exit, before JAX
  shuts its client down."""
  global _thread
  client = _client()
  if client is None or jax.process_count() == 1 or _thread is not None:
    return
  _thread = threading.Thread(
      target=_beat, args=(client, jax.process_index(), jax.process_count()),
      name="cnn_jax-heartbeat", daemon=True)
  _thread.start()
  atexit.register(stop)  # runs before JAX's own exit handler (LIFO)


def stop():
  """At a normal exit: marks this process finished (its heartbeat stops
  without it being lost) and stops the thread (a no-op when none runs)."""
  global _thread
  _stop.set()
  if _thread is not None:
    _thread.join(timeout=5)
    _thread = None
    try:
      _client().key_value_set(f"{_PREFIX}finished/{jax.process_index()}",
                              "1", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the service is gone: no one is left to look


def lost_processes():
  """After a failed collective: the sorted indices of the processes that
  stopped sending heartbeats and did not see the failure themselves, or
  None when the coordination service cannot be reached (process 0, which
  hosts it, is gone). Takes about WATCH_S seconds; call it once, in every
  process whose collective failed."""
  client, me = _client(), jax.process_index()
  if client is None:
    return None
  try:
    client.key_value_set(f"{_PREFIX}noticed/{me}", "1", allow_overwrite=True)
    before = _values(client, "heartbeat")
    time.sleep(WATCH_S)
    after = _values(client, "heartbeat")
    noticed = _values(client, "noticed")
    lost = [p for p in range(jax.process_count())
            if p not in noticed and before.get(p) == after.get(p)]
    client.key_value_set(f"{_PREFIX}looked/{me}", "1", allow_overwrite=True)
    _wait_for_survivors(client, lost)
    return lost
  except Exception:  # pylint: disable=broad-except
    return None


def failure_message(error):
  """The one line a process prints when a collective failed (`error`),
  naming the lost processes (lost_processes: takes about WATCH_S)."""
  _reporting.acquire()  # the heartbeat thread then stays quiet
  me, count = jax.process_index(), jax.process_count()
  lost = lost_processes()
  first = str(error).strip().splitlines()[0][:300] if str(error) else ""
  if lost is None:
    what = ("a collective with the other processes failed: the coordination "
            "service (process 0) cannot be reached: process 0 was lost")
  elif lost:
    what = ("a collective with the other processes failed: lost "
            f"{_named(lost)} of {count} (no heartbeat)")
  else:  # e.g. out of memory, or a network error between live processes
    what = "a computation failed while every process still sends heartbeats"
  return f"error: process {me} of {count}: {what}: {first}"


def is_collective_failure(error):
  """Whether `error` (raised in a multi-process run) is a failed
  collective: a runtime error of XLA, or one of the CPU collectives
  library (Gloo) that JAX raises as ValueError."""
  if jax.process_count() == 1:
    return False
  if isinstance(error, jax.errors.JaxRuntimeError):
    return True
  return isinstance(error, (ValueError, RuntimeError)) and any(
      marker in str(error) for marker in ("Gloo", "NCCL", "UNAVAILABLE",
                                          "Connection reset"))
