"""--config files (configs/*.py with a get_config()), loaded so that a broken
one is reported by name rather than by a traceback through absl.

ml_collections' own parser lets a config file's exception escape from flag
parsing with every absl frame, recasts a ValueError into a message holding
that traceback as text, and hides an OSError until the config is first
read. `define_flag` is config_flags.DEFINE_config_file with a parser that
raises ConfigFileError instead, e.g.

  configs/x.py: get_config() raised RuntimeError: no such dataset
    configs/x.py:12 in get_config

(the traceback's frames in the user's files only: not the standard library,
installed packages, or this package).
"""

import importlib.machinery
import importlib.util
import os
import sys
import sysconfig

from absl import flags
from ml_collections import config_flags


class ConfigFileError(Exception):
  """The config file is missing, does not compile, or raised when loaded or
  in get_config(); the message names it (and the user's frames)."""


# Where frames are not the user's: the standard library, installed packages,
# and cnn_jax. (The tracebacks shown start in `load`, below launch.py's and
# absl's frames.)
_NOT_USER_CODE = tuple(sorted({
    os.path.realpath(path) + os.sep
    for path in (sysconfig.get_paths()["stdlib"],
                 sysconfig.get_paths()["purelib"],
                 sysconfig.get_paths()["platlib"],
                 os.path.dirname(os.path.abspath(__file__)))}))


def _shown(path):
  """`path` relative to the working directory when it lies below it."""
  relative = os.path.relpath(os.path.abspath(path))
  return path if relative.startswith(os.pardir) else relative


def _user_frames(error):
  """'  file:line in function' for each frame of `error`'s traceback that is
  in the user's code, outermost first."""
  lines, tb = [], error.__traceback__
  while tb is not None:
    code = tb.tb_frame.f_code
    path = code.co_filename
    if not path.startswith("<") and not os.path.realpath(path).startswith(
        _NOT_USER_CODE):
      lines.append(f"  {_shown(path)}:{tb.tb_lineno} in {code.co_name}")
    tb = tb.tb_next
  return lines


def _failure(filename, during, error):
  """ConfigFileError: `filename`: `during` raised Type: message + frames."""
  if isinstance(error, SyntaxError) and error.filename and (
      os.path.realpath(error.filename) == os.path.realpath(filename)):
    return ConfigFileError(
        f"{_shown(filename)}:{error.lineno}: {type(error).__name__}: "
        f"{error.msg}")
  message = str(error)
  if isinstance(error, SyntaxError):  # in a file the config imports
    message = f"{_shown(error.filename)}:{error.lineno}: {error.msg}"
  return ConfigFileError("\n".join(
      [f"{_shown(filename)}: {during} raised {type(error).__name__}"
       + (f": {message}" if message else "")] + _user_frames(error)))


def load(path, name="config_config", lock=True):
  """The config of `path` ('file.py' or 'file.py:argument'):
  get_config() or get_config(argument), locked if `lock` and it can be.

  The module is loaded as ml_collections loads it (as module `name`, in
  sys.modules). Raises ConfigFileError naming the file.
  """
  filename, *arguments = path.split(":", 1)
  if not os.path.isfile(filename):
    raise ConfigFileError(
        f"{_shown(filename)}: " + ("not a file" if os.path.exists(filename)
                                   else "no such config file"))
  loader = importlib.machinery.SourceFileLoader(name, filename)
  module = importlib.util.module_from_spec(
      importlib.util.spec_from_loader(name, loader))
  sys.modules[name] = module
  try:
    loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise _failure(filename, "loading it", e) from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigFileError(f"{_shown(filename)} has no get_config() function")
  call = f"get_config({', '.join(repr(a) for a in arguments)})"
  try:
    config = module.get_config(*arguments)
  except Exception as e:  # pylint: disable=broad-except
    raise _failure(filename, call, e) from None
  if config is None:
    raise ConfigFileError(f"{_shown(filename)}: {call} returned None "
                          "(no return statement?)")
  if lock and callable(getattr(config, "lock", None)):
    config.lock()
  return config


class _ConfigFileParser(flags.ArgumentParser):
  """The parser of a config-file flag (as ml_collections' own), loading the
  file with `load`."""

  def __init__(self, name, lock_config=True):
    self.name = name
    self.lock_config = lock_config

  def parse(self, argument):
    return load(argument, f"{self.name}_config", self.lock_config)

  def flag_type(self):
    return "config object"


def define_flag(name, default, help_string, lock_config=True):
  """config_flags.DEFINE_config_file whose value is loaded by `load`: a
  broken file makes flag parsing raise ConfigFileError (not a subclass of
  ValueError, which absl would recast with the traceback as text)."""
  holder = config_flags.DEFINE_config_file(name, default, help_string,
                                           lock_config=lock_config)
  flags.FLAGS[name].parser = _ConfigFileParser(name, lock_config)
  return holder
