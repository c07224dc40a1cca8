"""Pretrained weights from torchvision / timm state dicts, without torch.

`load(path)` reads a weights file the user points the config at (nothing is
downloaded) and returns {'params', 'batch_stats'} for our Linen models:
  .safetensors   the `safetensors` package's numpy reader;
  .npz           numpy (no pickles); keys either torch's ('layer1.0.conv1.weight')
                 or ours ('params/layer1_0/conv1/kernel', 'batch_stats/...');
  .pth/.pt/.bin  only through `torch.load(weights_only=True)`, when torch is
                 installed (a raw unpickle could run any code).

`convert(state_dict)` maps torch's names and layouts onto ours by rule, so it
covers torchvision's and timm's ResNet-18/34/50/101/152, VGG-11/13/16/19
(with or without BN; timm's conv `pre_logits` too), DenseNet-121/169/201 and
AlexNet (tests/transfer/test_pretrained.py checks the logits of each against torch):
  * names: 'layer1.0.conv1.weight' -> 'layer1_0/conv1/kernel' (a numeric
    component joins the one before it with '_'); DenseNet's 'features.'
    container is dropped ('features.denseblock1.denselayer1.norm1' ->
    'denseblock1/denselayer1/norm1'), and its old 'norm.1' keys read as 'norm1';
  * weight [O, I, *window] (conv) -> kernel [*window, I, O]; weight [O, I]
    (linear) -> kernel [I, O]; weight [C] (BatchNorm) -> scale; bias -> bias;
    running_mean / running_var -> batch_stats mean / var
    (num_batches_tracked is dropped);
  * AlexNet/VGG: torch flattens the last feature map [C, H, W], flax
    [H, W, C], so the rows of the first classifier layer are permuted.
Floating arrays become float32.
"""

import os
import re

import numpy as np

from cnn_jax.transfer import paths

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Old torchvision DenseNet checkpoints: 'denselayer1.norm.1.weight'.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|"
    r"running_mean|running_var))$")
# timm's VGG ends in a ConvMlp (conv7x7 fc1, conv1x1 fc2) and a head.
_TIMM_VGG_NAMES = {"pre_logits.fc1": "classifier.0",
                   "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}
_STATS = {"running_mean": "mean", "running_var": "var"}


def read_state_dict(path):
  """{torch key or our 'collection/path': numpy array} from a weights file."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ValueError(f"reading {path} needs the safetensors package "
                       "(pip install safetensors)") from e
    try:
      return load_file(path)
    except Exception as e:  # pylint: disable=broad-except
      # e.g. bfloat16 tensors, which numpy has no type for.
      raise ValueError(f"{path}: cannot be read as safetensors ({e}); "
                       "float32/float16 tensors are supported") from e
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  if suffix in _TORCH_SUFFIXES:
    return _read_torch(path)
  raise ValueError(f"{path}: unknown weights format {suffix!r}; use "
                   ".safetensors, .npz or (with torch installed) .pth")


def _read_torch(path):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError(
        f"{path} is a torch pickle: reading it needs torch (it is read only "
        "with torch.load(weights_only=True)); or save it as .safetensors") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
  if not isinstance(state, dict):
    raise ValueError(f"{path}: holds a {type(state).__name__}, not a state "
                     "dict of tensors")
  arrays = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                       "not a tensor")
    if value.is_floating_point():
      value = value.float()
    arrays[key] = value.detach().cpu().numpy()
  return arrays


def load(path):
  """{'params', 'batch_stats'} (nested dicts of numpy) from a weights file."""
  state_dict = read_state_dict(path)
  if state_dict and all(k.split("/", 1)[0] in paths.COLLECTIONS
                        and "/" in k for k in state_dict):
    return from_flat_variables(state_dict)
  try:
    return convert(state_dict)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def from_flat_variables(flat):
  """{'params/a/b': x, 'batch_stats/...': y} -> {'params': {...}, ...}."""
  variables = {c: {} for c in paths.COLLECTIONS}
  for key, value in flat.items():
    collection, path = key.split("/", 1)
    variables[collection][path] = _float32(np.asarray(value))
  return {c: paths.unflatten(v) for c, v in variables.items()}


def to_flat_variables(variables):
  """The inverse of from_flat_variables: for np.savez(path, **flat)."""
  return {f"{c}/{p}": np.asarray(x) for c in paths.COLLECTIONS
          for p, x in paths.flatten(variables.get(c, {})).items()}


def _float32(x):
  return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


def module_path(module_key):
  """torch module name -> our module path: 'layer1.0.downsample.0' ->
  'layer1_0/downsample_0', 'features.denseblock1.denselayer2.norm1' ->
  'denseblock1/denselayer2/norm1', 'features.3' -> 'features_3'."""
  parts = module_key.split(".")
  if len(parts) > 1 and parts[0] == "features" and not parts[1].isdigit():
    parts = parts[1:]  # DenseNet's container
  names = []
  for part in parts:
    if part.isdigit() and names:
      names[-1] += "_" + part
    else:
      names.append(part)
  return "/".join(names)


def _normalize_key(key):
  """Undo wrappers and old/timm spellings: a torch key as torchvision writes it."""
  if key.startswith("module."):  # saved from nn.DataParallel
    key = key[len("module."):]
  match = _DENSENET_OLD_KEY.match(key)
  if match:
    key = match.group(1) + match.group(2)
  module, _, leaf = key.rpartition(".")
  return _TIMM_VGG_NAMES.get(module, module) + "." + leaf


def _flatten_grid(state_dict):
  """(key of the first classifier layer, channels) when the classifier reads
  a flattened [C, H, W] feature map with H * W > 1 (AlexNet/VGG), else None."""
  convs = [(int(k.split(".")[1]), v) for k, v in state_dict.items()
           if re.fullmatch(r"features\.\d+\.weight", k) and v.ndim == 4]
  linears = [(int(k.split(".")[1]), k) for k in state_dict
             if re.fullmatch(r"classifier\.\d+\.weight", k)]
  if not convs or not linears:
    return None
  channels = max(convs, key=lambda item: item[0])[1].shape[0]
  return min(linears)[1], channels


def _grid_rows_to_hwc(weight, channels, key):
  """[O, C*H*W] (torch's flatten) -> [O, H*W*C] (ours)."""
  out_features, in_features = weight.shape
  cells = in_features // channels
  side = int(round(np.sqrt(cells)))
  if cells * channels != in_features or side * side != cells:
    raise ValueError(f"{key}: {in_features} inputs are not {channels} "
                     "channels x a square grid")
  return (weight.reshape(out_features, channels, side, side)
          .transpose(0, 2, 3, 1).reshape(out_features, in_features))


def convert(state_dict):
  """{'params', 'batch_stats'} (nested numpy dicts) from a torch state dict.

  Args:
    state_dict: {torch key: array} (numpy, or anything np.asarray takes).
  Raises:
    ValueError: a key this converter has no rule for.
  """
  state_dict = {_normalize_key(k): np.asarray(v)
                for k, v in state_dict.items()}
  grid = _flatten_grid(state_dict)
  flat = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    module, _, leaf = key.rpartition(".")
    path = module_path(module)
    value = _float32(value)
    if leaf == "num_batches_tracked":
      continue
    if leaf in _STATS:
      flat["batch_stats"][f"{path}/{_STATS[leaf]}"] = value
    elif leaf == "bias":
      flat["params"][f"{path}/bias"] = value
    elif leaf == "weight" and value.ndim == 1:
      flat["params"][f"{path}/scale"] = value
    elif leaf == "weight":
      if module.startswith("classifier.") and value.ndim > 2:
        # timm's conv pre_logits: a dense layer over the flattened grid.
        value = value.reshape(value.shape[0], -1)
      if grid is not None and key == grid[0]:
        value = _grid_rows_to_hwc(value, grid[1], key)
      if value.ndim == 2:  # linear [O, I] -> [I, O]
        value = value.T
      else:  # conv [O, I, *window] -> [*window, I, O]
        value = value.transpose(tuple(range(2, value.ndim)) + (1, 0))
      flat["params"][f"{path}/kernel"] = np.ascontiguousarray(value)
    else:
      raise ValueError(f"no conversion rule for the torch key {key!r}")
  # A model without BatchNorm has no batch_stats collection at all.
  return {c: paths.unflatten(v) for c, v in flat.items()
          if v or c == "params"}
