"""MNIST (configs/mnist.py) on 1 and N CPU processes, 1 device each: test
accuracy and the time per step, at the same global batch.

  python experiments/bench_distributed.py [--processes=1,2] [--epochs=1]
  python experiments/bench_distributed.py --sweep [--processes=1,2]

--sweep: configs/mnist_sweep.py with N members (seeds 0..N-1, learning
rate 3e-3), one member per process (config.sweep.member_devices=N) against
the same N members in one process (member_devices=1); img/s are all
members' images, ms/step one step of all of them; test accuracy the best
member's.

Each row runs `launch.py --config configs/mnist.py` in that many processes
on localhost (jax.distributed, JAX_NUM_CPU_DEVICES=1 each) in a fresh
workdir. Reported: test accuracy, steps, wall seconds, train img/s (the
run's own measure, compilation and evaluation excluded) and ms per step;
"overhead" is each row's ms/step minus the 1-process row's (on one machine
the processes share its cores: the overhead then includes that sharing,
not only the collectives). Prints a table; the last line is one JSON object
with the headline figures.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments import machine  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("processes", ["1", "2"], "Process counts, 1 first.")
flags.DEFINE_integer("epochs", 1, "config.train.num_epochs.")
flags.DEFINE_integer("timeout", 1800, "Seconds allowed for each row.")
flags.DEFINE_bool("sweep", False, "A sweep of as many members as the "
                  "largest process count, one member per process.")
FLAGS = flags.FLAGS


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run(processes, workdir):
  """The summary.json of configs/mnist.py trained in `processes` processes."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
  port = _free_port()
  command = [sys.executable, os.path.join(REPO, "launch.py"),
             "--config", os.path.join(REPO, "configs", _config_file()),
             f"--workdir={workdir}",
             f"--config.train.num_epochs={FLAGS.epochs}"]
  if FLAGS.sweep:
    members = _members()
    command += [f"--config.sweep.axes.seed={tuple(range(members))!r}",
                "--config.sweep.axes.optim.learning_rate=(0.003,)",
                f"--config.sweep.member_devices={processes}"]
  children = []
  try:
    for index in range(processes):
      extra = ([f"--coordinator_address=localhost:{port}",
                f"--num_processes={processes}", f"--process_id={index}"]
               if processes > 1 else [])
      children.append(subprocess.Popen(command + extra, cwd=REPO, env=env,
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True))
    deadline = time.time() + FLAGS.timeout
    for child in children:
      _, stderr = child.communicate(timeout=max(1, deadline - time.time()))
      if child.returncode:
        raise RuntimeError(f"{processes} processes: exit {child.returncode}: "
                           f"{stderr[-1000:]}")
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
        child.communicate(timeout=60)
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def _config_file():
  return "mnist_sweep.py" if FLAGS.sweep else "mnist.py"


def _members():
  """Members of the --sweep: the largest process count (1 per process)."""
  return max(int(n) for n in FLAGS.processes) if FLAGS.sweep else 1


def main(argv):
  del argv
  counts = [int(n) for n in FLAGS.processes]
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for count in counts:
      summary = run(count, os.path.join(folder, f"p{count}"))
      batch = summary["config"]["data"]["batch_size"]
      rows.append({"processes": count,
                   "test_accuracy": summary["test_accuracy"],
                   "steps": summary["steps"],
                   "wall_s": round(summary["wall_seconds"], 1),
                   "img_per_s": round(summary["train_img_per_s"], 1),
                   "ms_per_step": round(
                       1000 * batch * _members()
                       / summary["train_img_per_s"], 2)})
  base = rows[0]["ms_per_step"]
  cpu = machine.cpu_description()
  what = (f"configs/mnist_sweep.py, {_members()} members"
          if FLAGS.sweep else "configs/mnist.py")
  print(f"{what}, {FLAGS.epochs} epoch(s), global batch "
        f"{batch}, 1 CPU device per process; {cpu}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}")
  print("processes  test acc  steps  wall s   img/s  ms/step  overhead ms")
  for row in rows:
    row["overhead_ms_per_step"] = round(row["ms_per_step"] - base, 2)
    print(f"{row['processes']:9d}  {row['test_accuracy']:8.4f}  "
          f"{row['steps']:5d}  {row['wall_s']:6.1f}  {row['img_per_s']:6.0f}"
          f"  {row['ms_per_step']:7.2f}  {row['overhead_ms_per_step']:11.2f}")
  print(json.dumps({"cpu": cpu, "cores": os.cpu_count(),
                    "config": _config_file(), "members": _members(),
                    "rows": rows}))


if __name__ == "__main__":
  app.run(main)
