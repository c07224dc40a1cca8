"""distributed/liveness.py on 3 processes on localhost doing all-gathers
(or waiting in barriers of the coordination service, as Orbax's saves do):
when process 2 kills itself, both survivors name process 2 (and only it),
process 0, which hosts the coordination service, staying until process 1
has named it; when all raise an error with every process alive, none is
named. Every child is waited for with a timeout and killed by its pid."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.distributed import launched

_LOOP = """
import os, signal, sys
import numpy as np
import jax
from jax.experimental import multihost_utils
from cnn_jax.distributed import liveness, multihost
index, case = int(sys.argv[2]), sys.argv[3]
killed = case.startswith("killed")
liveness.STALE_S = 4.0  # (15 s in runs) to keep the test short
multihost.initialize(f"localhost:{sys.argv[1]}", 3, index, timeout_s=60)
client = liveness._client()
try:
  for step in range(100000):
    if case == "killed in a barrier":  # not woken by the kill
      client.wait_at_barrier(f"step{step}", 100000)
    else:
      multihost_utils.process_allgather(np.asarray([step]))
    if step == 20 and index == 2 and killed:
      os.kill(os.getpid(), signal.SIGKILL)
    if step == 20 and not killed:  # as an out-of-memory error would
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: test")
except Exception as e:
  assert liveness.is_collective_failure(e), e
  print(liveness.failure_message(e), flush=True)
  os._exit(1)
"""


@pytest.mark.parametrize("case", ["killed", "killed in a barrier",
                                  "all alive"])
def test_a_failed_collective_names_the_lost_process(case):
  port = launched.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
             PYTHONPATH=REPO)
  children = [subprocess.Popen(
      [sys.executable, "-c", _LOOP, str(port), str(index), case], cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for index in range(3)]
  results = launched.wait(children, timeout=120)
  if case == "killed":
    expected = ("a collective with the other processes failed: lost process "
                "2 of 3 (no heartbeat): ")
  elif case == "killed in a barrier":  # the heartbeat thread's line
    expected = "lost process 2 of 3 (no heartbeat for 4 s)"
  else:
    expected = ("a computation failed while every process still sends "
                "heartbeats: RESOURCE_EXHAUSTED: test")
  if case.startswith("killed"):
    assert results[2][0] == -9, results[2][2][-2000:]
  survivors = results[:2] if case.startswith("killed") else results
  for index, (code, stdout, stderr) in enumerate(survivors):
    assert code == 1, stderr[-2000:]
    assert f"error: process {index} of 3: {expected}" in stdout + stderr, (
        stdout, stderr[-2000:])
