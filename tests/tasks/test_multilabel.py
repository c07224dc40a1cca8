"""Multi-label task: CheXNet-weighted BCE, exact AUROC, F1, config runs."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from cnn_jax.data import batching
from cnn_jax.data.dataset import ArrayDataset
from cnn_jax.tasks import TASKS
from cnn_jax.tasks import losses
from cnn_jax.tasks import metrics
from cnn_jax.tasks import multilabel
from cnn_jax.tasks import task_for_run
from cnn_jax.training import steps
from cnn_jax.training import train

def _sigmoid(z):
  return 1.0 / (1.0 + math.exp(-z))


class WeightedBceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_equals_hand_computed_value(self):
    logits = jnp.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    labels = jnp.array([[1, 0, 1], [0, 1, 0]])
    w_pos = jnp.array([0.7, 0.2, 0.9])
    w_neg = jnp.array([0.3, 0.8, 0.1])
    got = self.variant(losses.weighted_sigmoid_cross_entropy)(
        logits, labels, w_pos, w_neg)
    expected = [
        -(0.7 * math.log(_sigmoid(2.0)) + 0.8 * math.log(1 - _sigmoid(-1.0))
          + 0.9 * math.log(_sigmoid(0.5))) / 3,
        -(0.3 * math.log(1 - _sigmoid(-3.0)) + 0.2 * math.log(_sigmoid(0.0))
          + 0.1 * math.log(1 - _sigmoid(4.0))) / 3,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)

  def test_unweighted_is_optax_sigmoid_bce(self):
    import optax  # pylint: disable=g-import-not-at-top
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4)) * 30
    labels = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (5, 4))
    np.testing.assert_allclose(
        losses.weighted_sigmoid_cross_entropy(logits, labels),
        optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1),
        rtol=1e-5, atol=1e-6)

  def test_chexnet_weights_from_label_frequencies(self):
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [1, 1, 1]])
    w_pos, w_neg = losses.chexnet_class_weights(labels)
    # Class 0: 2 of 4 positive; class 1: 1 of 4; class 2: all positive.
    np.testing.assert_allclose(w_pos, [2 / 4, 3 / 4, 0.5])
    np.testing.assert_allclose(w_neg, [2 / 4, 1 / 4, 0.5])


class AurocTest(chex.TestCase):

  @pytest.mark.filterwarnings("ignore")
  def test_equals_sklearn_with_ties(self):
    rng = np.random.default_rng(0)
    for trial in range(20):
      n = int(rng.integers(2, 300))
      labels = rng.integers(0, 2, n)
      if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
      # Few distinct values: many ties, within and across the classes.
      scores = np.round(rng.random(n) + 0.3 * labels, int(trial % 3))
      self.assertAlmostEqual(metrics.roc_auc(labels, scores),
                             sk_metrics.roc_auc_score(labels, scores),
                             places=12)

  def test_average_ranks_match_scipy(self):
    from scipy import stats  # pylint: disable=g-import-not-at-top
    values = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    np.testing.assert_array_equal(metrics.average_ranks(values),
                                  stats.rankdata(values))

  def test_perfect_reversed_and_single_class(self):
    self.assertEqual(metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]), 1.0)
    self.assertEqual(metrics.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]), 0.0)
    self.assertEqual(metrics.roc_auc([0, 1], [0.5, 0.5]), 0.5)
    self.assertTrue(math.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])))

  def test_f1_equals_sklearn(self):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (200, 5))
    guess = rng.integers(0, 2, (200, 5))
    guess[:, 4] = 0
    labels[:, 4] = 0  # no positives at all: F1 0 (sklearn zero_division=0)
    tp = (guess & labels).sum(0)
    fp = (guess & (1 - labels)).sum(0)
    fn = ((1 - guess) & labels).sum(0)
    np.testing.assert_allclose(
        metrics.f1_from_counts(tp, fp, fn),
        sk_metrics.f1_score(labels, guess, average=None, zero_division=0))


def _config(weighting="chexnet", threshold=0.5):
  config = ml_collections.ConfigDict()
  config.task = "multilabel"
  config.multilabel = ml_collections.ConfigDict(
      {"class_weighting": weighting, "threshold": threshold})
  return config


def _toy_split(n=40, labels_count=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, labels_count)) < [0.2, 0.5, 0.9]).astype(np.int32)
  images = rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8)
  return ArrayDataset(images, labels, "toy/train", ("a", "b", "c"))


class MultilabelTaskTest(chex.TestCase):

  def test_positive_weights_reach_the_loss(self):
    train_set = _toy_split()
    task = task_for_run(_config(), train_set)
    w_pos, w_neg = losses.chexnet_class_weights(train_set.labels)
    logits = jax.random.normal(jax.random.PRNGKey(2), (6, 3))
    batch = {"label": jnp.asarray(train_set.labels[:6])}
    np.testing.assert_allclose(
        task.loss(logits, batch),
        losses.weighted_sigmoid_cross_entropy(logits, batch["label"], w_pos,
                                              w_neg), rtol=1e-6)
    unweighted = task_for_run(_config("none"), train_set)
    np.testing.assert_allclose(
        unweighted.loss(logits, batch),
        losses.weighted_sigmoid_cross_entropy(logits, batch["label"]),
        rtol=1e-6)
    self.assertFalse(np.allclose(task.loss(logits, batch),
                                 unweighted.loss(logits, batch)))

  def test_bad_options_and_labels_are_named(self):
    with self.assertRaisesRegex(ValueError, "class_weighting='inverse'"):
      task_for_run(_config("inverse"), _toy_split())
    with self.assertRaisesRegex(ValueError, "threshold"):
      task_for_run(_config(threshold=1.5), _toy_split())
    single = ArrayDataset(np.zeros((4, 8, 8, 1), np.uint8),
                          np.zeros(4, np.int32), "single/train")
    with self.assertRaisesRegex(ValueError, r"multi-hot labels \[N, L\]"):
      task_for_run(_config(), single)

  def test_evaluation_over_padded_batches(self):
    """Sums + kept examples over a padded split equal metrics computed
    directly on all examples (AUROC from sklearn)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (53, 3)).astype(np.int32)
    logits = np.round(rng.normal(size=(53, 3)) + 1.5 * labels, 1)
    task = multilabel.make_multilabel_task(class_names=("a", "b", "c"))
    # The "model" reads its logits from the image pixels' row index.
    dataset = ArrayDataset(np.arange(53, dtype=np.uint8)[:, None, None, None],
                           labels, "toy/test", ("a", "b", "c"))

    def eval_fn(_, batch):
      batch_logits = jnp.asarray(logits)[batch["image"][:, 0, 0, 0]]
      examples = task.eval_examples(batch_logits, batch)
      return task.eval_sums(batch_logits, batch), examples

    result = steps.evaluate(eval_fn, None, dataset, 20, task)
    self.assertEqual(result["count"], 53)
    probs = 1 / (1 + np.exp(-logits))
    for k, name in enumerate("abc"):
      self.assertAlmostEqual(result[f"auroc/{name}"],
                             sk_metrics.roc_auc_score(labels[:, k],
                                                      probs[:, k]), places=6)
    self.assertAlmostEqual(result["mean_auroc"], sk_metrics.roc_auc_score(
        labels, probs, average="macro"), places=6)
    guess = (probs >= 0.5).astype(int)
    self.assertAlmostEqual(result["accuracy"],
                           sk_metrics.accuracy_score(labels, guess))
    self.assertAlmostEqual(result["label_accuracy"], (guess == labels).mean())
    self.assertAlmostEqual(result["mean_f1"], sk_metrics.f1_score(
        labels, guess, average="macro"))
    expected_loss = np.mean(losses.weighted_sigmoid_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels)))
    self.assertAlmostEqual(result["loss"], float(expected_loss), places=5)

  def test_registered_task_is_unweighted(self):
    task = TASKS["multilabel"]
    self.assertEqual(task.headline, "mean_auroc")
    logits, labels = jnp.array([[0.3, -2.0]]), jnp.array([[1, 0]])
    np.testing.assert_allclose(
        task.loss(logits, {"label": labels}),
        losses.weighted_sigmoid_cross_entropy(logits, labels))


@pytest.mark.parametrize("name", ["multidigit", "pneumonia", "chexnet"])
def test_multilabel_configs_build(name):
  """Each config names a known task, source and model, and its model's
  output has one logit per label (shapes only: nothing is compiled)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import SOURCES  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.task == "multilabel" and config.data.name in SOURCES
  model = steps.create_model(config.model)
  size = tuple(config.data.get("image_size", ()) or (64, 64))
  channels = config.data.get("channels", 1)
  x = jnp.zeros((2, *size, channels))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), x)
  out = jax.eval_shape(functools.partial(model.apply, train=False),
                       variables, x)
  assert out.shape == (2, config.model.num_classes)


@pytest.mark.slow
def test_multidigit_config_one_train_step():
  """configs/multidigit.py builds, and one train step + eval step run."""
  from configs import multidigit  # pylint: disable=g-import-not-at-top
  config = multidigit.get_config()
  config.data.num_train, config.data.num_test = 16, 8
  splits = train.load_splits(config.data)
  train_set = splits["train"]
  task = task_for_run(config, train_set)
  assert task.name == "multilabel" and train_set.labels.shape == (16, 10)
  state, _ = steps.create_train_state(config, jax.random.PRNGKey(0),
                                      train_set.example_shape, 1)
  mean, std = steps.normalization_stats(config.data, train_set)
  step = jax.jit(functools.partial(steps.train_step, mean=mean, std=std,
                                   task=task))
  batch = next(batching.train_batches(train_set, 8, 0))[1]
  state, logged = step(state, batch)
  assert np.isfinite(logged["loss"]) and "accuracy" in logged
  eval_fn = jax.jit(functools.partial(steps.eval_step, mean=mean, std=std,
                                      task=task))
  result = steps.evaluate(eval_fn, state, splits["test"], 8, task)
  assert result["count"] == 8 and "auroc/3" in result
