"""distributed/liveness.py: 3 processes on localhost do all-gathers until
process 2 kills itself; both survivors name process 2 (and only it), and
process 0, which hosts the coordination service, stays until process 1 has
named it. Every child is waited for with a timeout and killed by its pid."""

import os
import subprocess
import sys

from tests.conftest import REPO
from tests.distributed import launched

_LOOP = """
import os, signal, sys
import numpy as np
import jax
from jax.experimental import multihost_utils
from cnn_jax.distributed import liveness, multihost
index = int(sys.argv[2])
multihost.initialize(f"localhost:{sys.argv[1]}", 3, index, timeout_s=60)
try:
  for step in range(100000):
    multihost_utils.process_allgather(np.asarray([step]))
    if step == 20 and index == 2:
      os.kill(os.getpid(), signal.SIGKILL)
except Exception as e:
  assert liveness.is_collective_failure(e), e
  print(liveness.failure_message(e), flush=True)
  os._exit(1)
"""


def test_survivors_name_the_killed_process():
  port = launched.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
             PYTHONPATH=REPO)
  children = [subprocess.Popen(
      [sys.executable, "-c", _LOOP, str(port), str(index)], cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for index in range(3)]
  results = launched.wait(children, timeout=120)
  assert results[2][0] == -9, results[2][2][-2000:]
  for index, (code, stdout, stderr) in enumerate(results[:2]):
    assert code == 1, stderr[-2000:]
    assert (f"error: process {index} of 3: a collective with the other "
            "processes failed: lost process 2 of 3 (no heartbeat)") in stdout, (
                stdout, stderr[-2000:])
