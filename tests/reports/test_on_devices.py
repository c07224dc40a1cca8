"""--mode=heatmap's maps (reports/heatmap_mode.py) and --mode=report's
re-evaluation (reports/restored_run.py) on all 4 CPU devices of one process
equal those of one device: a tiny multi-label DenseNet run (configs/
multidigit.py, 5 test canvases: padded to 8 over 4 devices) trained in a
subprocess with 4 devices, then CAM, Grad-CAM and the predictions on a
mesh of 4 and of 1 device (and the run's own test metrics)."""

import json

import numpy as np

from tests.conftest import run_on_cpu_devices

_CODE = """
import json, sys
import jax
import ml_collections
import numpy as np
from cnn_jax.distributed import mesh as mesh_lib
from cnn_jax.reports import heatmap_mode, restored_run
from cnn_jax.training import train
from configs import multidigit

assert len(jax.devices()) == 4, jax.devices()
config = multidigit.get_config()
config.data.num_train, config.data.num_test = 16, 5
config.data.batch_size, config.data.eval_batch_size = 16, 4
config.train.num_epochs = 1
config.model.block_config, config.model.growth_rate = (1, 1), 4
config.model.num_init_features, config.model.bn_size = 8, 2
workdir = sys.argv[1]
train.train_and_evaluate(config, workdir)

run = restored_run.load_run(workdir)
test = run.splits["test"]
images = run.normalize(test.images)
every, one = mesh_lib.make_mesh(1), mesh_lib.make_mesh(1, jax.devices()[:1])
result = {"devices": [int(every.devices.size), int(one.devices.size)]}
for method in ("cam", "gradcam"):
  many = heatmap_mode.heatmap_arrays(config, run.variables, images,
                                     test.labels, "multilabel", every, method)
  single = heatmap_mode.heatmap_arrays(config, run.variables, images,
                                       test.labels, "multilabel", one, method)
  assert many.units == single.units and many.maps.keys() == single.maps.keys()
  np.testing.assert_allclose(many.logits, single.logits, rtol=1e-5, atol=1e-5)
  for key in single.maps:
    np.testing.assert_allclose(many.maps[key], single.maps[key], rtol=1e-4,
                               atol=1e-5)
  result[method] = [len(single.maps), float(np.abs(
      np.stack(list(single.maps.values()))).max())]
_, paths = heatmap_mode.write_heatmaps(config, workdir, count=5)
result["pngs"] = len(paths)

logits4, metrics4 = restored_run.predict(run)
run.config.mesh = ml_collections.ConfigDict({"data_devices": 1})
logits1, metrics1 = restored_run.predict(run)
np.testing.assert_allclose(logits4, logits1, rtol=1e-5, atol=1e-5)
saved = run.summary["test_metrics"]
result["predict"] = [list(logits4.shape), metrics4["count"]] + [
    [m[k] for m in (metrics4, metrics1, saved)] for k in ("mean_auroc", "loss")]
print(json.dumps(result))
"""


def test_heatmaps_and_report_predictions_on_4_devices_equal_1(tmp_path):
  result = json.loads(run_on_cpu_devices(
      _CODE.replace("sys.argv[1]", repr(str(tmp_path / "run"))),
      4).strip().splitlines()[-1])
  assert result["devices"] == [4, 1]
  # 5 images; CAM: every true label of each, Grad-CAM the same units; maps
  # that are not all zero (the comparison means something).
  assert result["cam"][0] == result["gradcam"][0] >= 5
  assert result["cam"][1] > 0 and result["gradcam"][1] > 0
  assert result["pngs"] == 5
  # The re-evaluation on 4 and on 1 device gives the run's own test
  # metrics (its weighted loss, AUROC from every example's scores).
  shape, count, aurocs, losses = result["predict"]
  assert shape == [5, 10] and count == 5
  assert 0 < aurocs[2] <= 1, aurocs
  np.testing.assert_allclose(aurocs, aurocs[2], rtol=1e-6)
  np.testing.assert_allclose(losses, losses[2], rtol=1e-5)
