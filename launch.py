"""Entry point: flags -> config -> train_and_evaluate / evaluate_checkpoint.

  python launch.py --config configs/mnist.py --workdir runs/mnist \
      --config.optim.learning_rate=0.001 --config.train.num_epochs=2
  python launch.py --config configs/mnist.py --workdir runs/mnist \
      --mode=evaluate [--step=N]
  python launch.py --mode=report --workdir runs/mnist [--report_html]
  python launch.py --mode=paper --workdir papers/mine \
      --runs=baseline=runs/a,cnn=runs/b_seed*  [--paper_title='...']
  python launch.py --mode=proposal --config configs/mnist.py \
      --workdir papers/proposal
  python launch.py --config configs/mnist_sweep.py --workdir runs/sweep
      (a config with a `sweep` section: every member in one program;
      --mode=evaluate --workdir runs/sweep/members/<k> for member k;
      with config.sweep.search random/halving/pbt: a search, configs/mnist_search.py)
  python launch.py --config configs/multidigit.py --workdir runs/multidigit \
      --mode=heatmap [--step=N] [--heatmap_method=gradcam]

Many processes (README "Many devices and hosts"): the same command on every
one, with --distributed (SLURM, Open MPI, TPU pods: auto-detected) or
--coordinator_address=host:port --num_processes=N --process_id=i.

Exit status: 0 done; 1 an error (one line on stderr; for a --config file
whose get_config() raised, followed by the file's frames); 2 bad flags;
128 + signal number (143 SIGTERM, 130 SIGINT) when training stopped on a
signal after saving a checkpoint: rerun the same command to resume.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

import jax

from cnn_jax import config_file
from cnn_jax.distributed import liveness
from cnn_jax.distributed import multihost
from cnn_jax.distributed import process_flags
from cnn_jax.sweeps import search
from cnn_jax.sweeps import search_settings
from cnn_jax.sweeps import sweep
from cnn_jax.sweeps import sweep_config
from cnn_jax.training import compilation_cache
from cnn_jax.training import cpu_malloc
from cnn_jax.training import preemption
from cnn_jax.training import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for logs, checkpoints, results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "report", "heatmap",
                                    "paper", "proposal"],
                  "train: train (or resume) in --workdir; evaluate: evaluate "
                  "a checkpoint of --workdir on the test split; report: "
                  "write --workdir/report/report.md (figures beside it) for "
                  "a finished run or sweep (needs no --config); heatmap: "
                  "PNGs of a checkpoint's heat maps (CAM / Grad-CAM) or "
                  "predicted masks over test images, in --workdir/heatmaps; "
                  "paper: an ICML-format paper of --runs in the folder "
                  "--workdir (needs no --config); proposal: the project "
                  "proposal of --config in the folder --workdir.")
flags.DEFINE_integer("step", None, "--mode=evaluate/heatmap: the "
                     "checkpoint's step (default: the latest intact one).")
# (A string checked by heatmap_mode: an enum would import reports.heatmaps,
# and matplotlib with it, into every run's start.)
flags.DEFINE_string("heatmap_method", "auto",
                    "--mode=heatmap: cam (GAP + dense models, e.g. "
                    "DenseNet), gradcam (any model), auto (cam where "
                    "possible).")
flags.DEFINE_string("heatmap_layer", "", "--mode=heatmap: the module path "
                    "of the layer, e.g. 'denseblock2' (default: CAM's "
                    "feature layer / the last feature-map layer).")
flags.DEFINE_integer("heatmap_count", 8, "--mode=heatmap: how many test "
                     "images.")
config_file.define_flag(
    "config", None, "A configs/*.py file; override keys with --config.a.b=v.",
    lock_config=True)
flags.DEFINE_bool("overwrite_report", False, "--mode=report/paper/"
                  "proposal: replace a report.md / paper.tex / proposal.tex "
                  "/ references.bib that was edited since it was written "
                  "(an unedited one is always regenerated).")
flags.DEFINE_bool("report_html", False, "--mode=report: also write "
                  "report.html.")
process_flags.define_flags()
flags.DEFINE_string("runs", "", "--mode=paper: label=run_folder pairs, "
                    "comma-separated; a folder may be a sweep or a glob; "
                    "runs sharing a label are seeds of one setting.")
flags.DEFINE_string("paper_title", "", "--mode=paper/proposal: the title "
                    "(default: a \\todo placeholder).")
flags.mark_flags_as_required(["workdir"])
flags.register_multi_flags_validator(
    ["config", "mode"],
    lambda f: f["mode"] in ("report", "paper") or f["config"] is not None,
    message="flag --config must have a value other than None (only "
    "--mode=report and --mode=paper read configs from the runs' "
    "summary.json)")

# Errors a user can cause and fix: reported as one line, without a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError,
                train.workdirs.WorkdirInUseError, train.workdirs.WorkdirError)


def parse_flags(argv):
  """absl's flag parsing, with a misspelt --config.key reported in one line
  (exit status 2), and a broken --config file by name, with its frames of
  the traceback (exit status 1).

  (ml_collections raises AttributeError/KeyError with a traceback for a key
  the locked config does not have.)
  """
  try:
    return FLAGS(argv)
  except config_file.ConfigFileError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    hint = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"error: unknown config key among {', '.join(bad)}: {hint}",
          file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Orbax and JAX log every checkpoint step at INFO; keep the console for
  # our progress lines (--verbosity=0 brings them back).
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    malloc = _keep_freed_memory()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if process_flags.asked(FLAGS):
    if FLAGS.mode in ("report", "heatmap", "paper", "proposal"):
      print(f"error: --mode={FLAGS.mode} runs in one process: drop "
            "--distributed/--coordinator_address", file=sys.stderr)
      return 1
    try:
      process_flags.initialize(FLAGS)
    except (RuntimeError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    # Process 0 prints the run's lines; the others one at start and end.
    if not multihost.is_main():
      print(f"{multihost.describe()}: {FLAGS.mode} in {FLAGS.workdir}",
            flush=True)
  if malloc is not None:
    cpu_malloc.settle(*malloc, jax.default_backend())
  if multihost.is_main():
    return _run_mode()
  # The others' progress lines (data notes and the like) go nowhere; their
  # errors still reach stderr.
  with open(os.devnull, "w", encoding="utf-8") as quiet:
    stdout, sys.stdout = sys.stdout, quiet
    try:
      code = _run_mode()
    finally:
      sys.stdout = stdout
  print(f"process {jax.process_index()}: done (exit status {code})",
        flush=True)
  return code


def _keep_freed_memory():
  """config.train.cpu_malloc, applied before JAX starts its threads
  (training/cpu_malloc.py: a CPU step no longer page-faults on its
  temporaries): (setting, what was done), or None for the modes that do not
  train or evaluate."""
  if FLAGS.mode not in ("train", "evaluate", "heatmap") or FLAGS.config is None:
    return None
  setting = FLAGS.config.get("train", {}).get("cpu_malloc", "auto")
  return setting, cpu_malloc.apply(setting)


def _run_mode():
  """The work of --mode: its exit status."""
  try:
    # The report stack (matplotlib among it: ~0.8 s) is imported only by
    # the modes that write reports, not by every training run's start.
    # pylint: disable=g-import-not-at-top
    if FLAGS.mode == "report":
      from cnn_jax.reports import entry as report_entry
      path = report_entry.write_report(FLAGS.workdir,
                                       overwrite=FLAGS.overwrite_report,
                                       html=FLAGS.report_html)
      print(f"report written to {path}")
      return 0
    if FLAGS.mode == "paper":
      from cnn_jax.reports.paper import assemble as paper
      result = paper.write_paper(paper.collect.parse_runs_flag(FLAGS.runs),
                                 FLAGS.workdir, FLAGS.paper_title,
                                 overwrite=FLAGS.overwrite_report)
      print("\n".join(result.lines()))
      return 0
    if FLAGS.mode == "proposal":
      from cnn_jax.reports.paper import proposal
      lines, _ = proposal.write_proposal(FLAGS.config, FLAGS.workdir,
                                         FLAGS.paper_title,
                                         overwrite=FLAGS.overwrite_report)
      print("\n".join(lines))
      return 0
    # A sweep config with --workdir <sweep>/members/<k>: member k's config.
    config = (FLAGS.config if FLAGS.mode == "train" else
              sweep_config.config_for_workdir(FLAGS.config, FLAGS.workdir))
    # Compiled programs from earlier runs (training/compilation_cache.py).
    compilation_cache.enable(config.train.get("compilation_cache", "auto"))
    if FLAGS.mode == "heatmap":
      from cnn_jax.reports import heatmap_mode
      folder, paths = heatmap_mode.write_heatmaps(
          config, FLAGS.workdir, FLAGS.step, FLAGS.heatmap_method,
          FLAGS.heatmap_layer, FLAGS.heatmap_count)
      print(f"{len(paths)} PNGs written to {folder}")
      return 0
    if FLAGS.mode == "evaluate":
      results, path = train.evaluate_checkpoint(config, FLAGS.workdir,
                                                FLAGS.step)
      if multihost.is_main():
        print(f"step {results['step']}: test accuracy "
              f"{results['test_accuracy']:.4f}, test loss "
              f"{results['test_loss']:.4f}; written to {path}")
      return 0
    # Sweeps and searches: one program over every device of every process
    # (members along 'members', batches along 'members' and 'data').
    if search_settings.is_search(config):  # random / halving / pbt in one program
      summary = search.train_and_evaluate(config, FLAGS.workdir)
      print(f"best: trial {summary['best_trial']}, validation accuracy "
            f"{summary['val_accuracy']:.4f} (test "
            f"{summary['test_accuracy']:.4f}); {summary['trials']} trials, "
            f"{summary['wall_seconds']:.0f} s; ranking in "
            f"{FLAGS.workdir}/summary.md, rerun the best with --config "
            f"{FLAGS.workdir}/best_config.py")
      return 0
    if sweep_config.is_sweep(config):  # every member at once, in one program
      summary = sweep.train_and_evaluate(config, FLAGS.workdir)
      print(f"best: member {summary['best_member']}, test accuracy "
            f"{summary['test_accuracy']:.4f}; {summary['members']} members, "
            f"{summary['wall_seconds']:.0f} s; ranking in "
            f"{FLAGS.workdir}/summary.md")
      return 0
    summary = train.train_and_evaluate(config, FLAGS.workdir)
  except preemption.Preempted as e:
    print(str(e), file=sys.stderr)
    return e.exit_code
  except Exception as e:  # pylint: disable=broad-except
    if not liveness.is_collective_failure(e):
      if isinstance(e, _USER_ERRORS):
        print(f"error: {e}", file=sys.stderr)
        return 1
      raise
    # A collective failed (another process died?): name the lost process
    # (from the processes' heartbeats, a few seconds) and exit now: at a
    # normal exit jax.distributed's shutdown barrier would wait for the dead
    # process until its heartbeat times out, then abort.
    print(liveness.failure_message(e), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
  if not multihost.is_main():
    return 0
  print(f"test accuracy {summary['test_accuracy']:.4f}, "
        f"test loss {summary['test_loss']:.4f}, {summary['steps']} steps, "
        f"{summary['wall_seconds']:.0f} s; results in {FLAGS.workdir}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
