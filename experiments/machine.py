"""The machine a benchmark ran on, for its table and JSON line: every figure
is reported with the CPU (model name, family/model and the ISA extensions
that decide which kernels oneDNN, XLA and PyTorch run)."""

import os
import subprocess

def cpu_description():
  """lscpu's model name, family/model, and the ISA extensions that decide
  which kernels oneDNN, XLA and PyTorch run."""
  info = {}
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
      key, _, value = line.partition(":")
      info[key.strip()] = value.strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  flags = set(info.get("Flags", "").split())
  isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni",
                     "amx_bf16", "amx_tile") if f in flags]
  if not any(f.startswith("amx") for f in flags):
    isa.append("no AMX")
  name = info.get("Model name", "unknown CPU")
  family = (f"family {info['CPU family']} model {info['Model']}"
            if "CPU family" in info and "Model" in info else "")
  cores = len(os.sched_getaffinity(0))
  return f"{name} ({family}; {' '.join(isa)}; {cores} cores)"


def gpu_description():
  """nvidia-smi's name of each NVIDIA GPU ('NVIDIA H200'), joined; None where
  there is none. Asked of nvidia-smi, not a framework: a driver process that
  started JAX on the GPU would take most of its memory from the runs it
  starts."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name",
                          "--format=csv,noheader"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  names = [line.strip() for line in out.splitlines() if line.strip()]
  return ", ".join(names) or None


def description():
  """The GPU (where there is one) and the CPU: what a benchmark's row names."""
  gpu = gpu_description()
  return f"{gpu}; host {cpu_description()}" if gpu else cpu_description()
