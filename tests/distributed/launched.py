"""launch.py in several processes on localhost, for tests/distributed/:
jax.distributed on a free port, CPU devices per process, every wait with a
timeout and every child left running killed by its pid."""

import os
import signal
import socket
import time

from tests import tiny_run
from tests.conftest import REPO

TIMEOUT = 240  # seconds for each group of processes
# Runs on other process or device counts sum gradients in another order:
# after a few steps single weights differ by ~1e-6 (seen 1.1e-6 on CI's CPU),
# far below one step's update, so a run that resumed from the wrong state or
# trained on other batches still fails.
ACROSS_COUNTS = {"rtol": 1e-5, "atol": 1e-5}


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start(workdir, data_dir, overrides, processes, devices, env, flags=(),
          hooks=None, config_file="mnist.py"):
  """Popen of launch.py (tiny_run.launch: configs/`config_file` with
  tiny_run.BASE and `overrides`) in each of `processes` processes with
  `devices` CPU devices each (jax.distributed on a free localhost port when
  > 1); hooks: {process index: Python code run before launch.py's main}."""
  env = dict(env, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
             PYTHONPATH=REPO)
  port = free_port()
  children = []
  for index in range(processes):
    distributed = ([f"--coordinator_address=localhost:{port}",
                    f"--num_processes={processes}", f"--process_id={index}",
                    "--distributed_timeout=60"] if processes > 1 else [])
    hook = (hooks or {}).get(index)
    children.append(tiny_run.launch(workdir, data_dir, overrides,
                                    *distributed, *flags, env=env,
                                    popen=True, hook=hook,
                                    config_file=config_file))
  return children


def wait(children, timeout=TIMEOUT):
  """[(exit status, stdout, stderr)] of every child; kills them all (by
  pid) if any is still running after `timeout` seconds."""
  deadline = time.time() + timeout
  results = []
  try:
    for child in children:
      stdout, stderr = child.communicate(
          timeout=max(1, deadline - time.time()))
      results.append((child.returncode, stdout, stderr))
  finally:
    for child in children:
      if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
  return results


def run(workdir, data_dir, overrides, processes, devices, env, flags=(),
        hooks=None, config_file="mnist.py"):
  """start, then wait: every process must exit 0."""
  results = wait(start(workdir, data_dir, overrides, processes, devices, env,
                       flags, hooks, config_file))
  for code, _, stderr in results:
    assert code == 0, stderr[-3000:]
  return results
