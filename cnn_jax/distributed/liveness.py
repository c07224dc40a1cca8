"""Which process of a multi-process run was lost, when a collective fails.

A collective with a killed process fails in the others within about a
second, but its error names only a socket ("Gloo AllGather failed: Read
error [127.0.0.1]:6017: Connection reset by peer"), and the coordination
service notices the lost process only when its heartbeats have been missing
for multihost.HEARTBEAT_TIMEOUT_S (then it ends every process from C++,
without our message). So every process also writes its own heartbeat into
the coordination service's key-value store from a background thread
(`start`: a counter under 'cnn_jax/heartbeat/<i>' every HEARTBEAT_S). A
process whose collective failed (`lost_processes`) writes
'cnn_jax/noticed/<i>', watches the counters for WATCH_S, and names as lost
every process that neither advanced its counter nor noticed the failure.

Process 0 hosts the coordination service: it waits (at most WAIT_OTHERS_S)
for the other survivors to finish their own look before it exits, since
its exit ends theirs. If process 0 itself dies, JAX ends the others at once
from C++ ("... the leader task was preempted/died ..."): nothing here can
run then.
"""

import atexit
import threading
import time

import jax
from jax._src import distributed  # the client of jax.distributed

HEARTBEAT_S = 0.5
# Long enough for a live process's counter to advance a few times.
WATCH_S = 2.5
WAIT_OTHERS_S = 10.0
_PREFIX = "cnn_jax/"

_thread = None
_stop = threading.Event()


def _client():
  return distributed.global_state.client


def _beat(client, index):
  count = 0
  while not _stop.is_set():
    try:
      client.key_value_set(f"{_PREFIX}heartbeat/{index}", str(count),
                           allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      return  # the coordination service is gone: nothing left to tell
    count += 1
    _stop.wait(HEARTBEAT_S)


def start():
  """Starts this process's heartbeat thread (after jax.distributed is up;
  once; a no-op in a single-process run). It stops at exit, before JAX
  shuts its client down."""
  global _thread
  client = _client()
  if client is None or jax.process_count() == 1 or _thread is not None:
    return
  _thread = threading.Thread(target=_beat, args=(client, jax.process_index()),
                             name="cnn_jax-heartbeat", daemon=True)
  _thread.start()
  atexit.register(stop)  # runs before JAX's own exit handler (LIFO)


def stop():
  """Stops the heartbeat thread (a no-op when none runs)."""
  global _thread
  _stop.set()
  if _thread is not None:
    _thread.join(timeout=5)
    _thread = None


def _values(client, folder):
  return {int(key.rsplit("/", 1)[-1]): value
          for key, value in client.key_value_dir_get(f"{_PREFIX}{folder}/")}


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
    if me == 0:  # the service lives as long as this process
      deadline = time.time() + WAIT_OTHERS_S
      survivors = set(range(jax.process_count())) - set(lost)
      while (not survivors <= set(_values(client, "looked"))
             and time.time() < deadline):
        time.sleep(0.1)
    return lost
  except Exception:  # pylint: disable=broad-except
    return None


def failure_message(error):
  """The one line a process prints when a collective failed (`error`),
  naming the lost processes (lost_processes: takes about WATCH_S)."""
  me, count = jax.process_index(), jax.process_count()
  lost = lost_processes()
  first = str(error).strip().splitlines()[0][:300] if str(error) else ""
  if lost is None:
    what = ("a collective with the other processes failed: the coordination "
            "service (process 0) cannot be reached: process 0 was lost")
  elif lost:
    names = ", ".join(str(p) for p in lost)
    what = ("a collective with the other processes failed: lost process"
            f"{'es' if len(lost) > 1 else ''} {names} of {count} (no "
            "heartbeat)")
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
