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
