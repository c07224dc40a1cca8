"""IoU, GIoU and NMS against values worked out by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.tasks import boxes


class IouTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_iou_and_giou_hand_values(self):
    # (y0, x0, y1, x1)
    a = jnp.array([[0., 0., 2., 2.],   # overlaps b in a 1x1 square
                   [0., 0., 1., 1.],   # disjoint from b, 1 apart diagonally
                   [0., 0., 4., 4.],   # contains b
                   [1., 2., 3., 5.]])  # identical to b
    b = jnp.array([[1., 1., 3., 3.],
                   [2., 2., 3., 3.],
                   [1., 1., 3., 3.],
                   [1., 2., 3., 5.]])
    iou = self.variant(boxes.iou)(a, b)
    giou = self.variant(boxes.giou)(a, b)
    # inter 1, union 4 + 4 - 1 = 7; enclosing 3x3 = 9.
    # disjoint: union 2, enclosing 9: giou = 0 - 7/9.
    # contained: 4 / 16; the enclosing box is the union.
    np.testing.assert_allclose(iou, [1 / 7, 0.0, 0.25, 1.0], rtol=1e-6)
    np.testing.assert_allclose(giou, [1 / 7 - 2 / 9, -7 / 9, 0.25, 1.0],
                               rtol=1e-6)

  def test_area_of_inverted_box_is_zero_and_pairwise_shape(self):
    assert float(jax.jit(boxes.area)(jnp.array([2., 2., 1., 5.]))) == 0.0
    a = jnp.array([[0., 0., 2., 2.], [0., 0., 1., 1.]])
    b = jnp.array([[1., 1., 3., 3.], [0., 0., 2., 2.], [5., 5., 6., 6.]])
    pairwise = jax.jit(boxes.pairwise_iou)(a, b)
    chex.assert_shape(pairwise, (2, 3))
    np.testing.assert_allclose(pairwise, [[1 / 7, 1.0, 0.0],
                                          [0.0, 0.25, 0.0]], rtol=1e-6)

  def test_giou_gradient_is_finite_for_empty_boxes(self):
    grad = jax.jit(jax.grad(lambda a: boxes.giou(a, jnp.zeros(4))))(
        jnp.zeros(4))
    chex.assert_tree_all_finite(grad)


class NmsTest(chex.TestCase):

  # D: the best box; A (IoU 0.9 with D) and B (IoU 72/118 with D) overlap it;
  # C is far away.
  BOXES = jnp.array([[0., 0., 10., 10.],    # A, score .9
                     [1., 1., 11., 11.],    # B, score .8
                     [20., 20., 30., 30.],  # C, score .7
                     [0., 0., 10., 9.]])    # D, score .95
  SCORES = jnp.array([0.9, 0.8, 0.7, 0.95])

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_example(self):
    keep = self.variant(boxes.nms, static_argnums=2)(self.BOXES, self.SCORES,
                                                     0.5)
    np.testing.assert_array_equal(keep, [False, False, True, True])

  @chex.variants(with_jit=True, without_jit=True)
  def test_threshold_and_classes(self):
    # IoU(D, B) = 72 / 118 = 0.61 < 0.7 and IoU(A, B) = 81 / 119 = 0.68 <
    # 0.7: only A goes (IoU 0.9 with D).
    keep = self.variant(boxes.nms, static_argnums=2)(self.BOXES, self.SCORES,
                                                     0.7)
    np.testing.assert_array_equal(keep, [False, True, True, True])
    # Per class: B (class 1) is not suppressed by D (class 0).
    keep = self.variant(
        lambda b, s, c: boxes.nms(b, s, 0.5, c))(
            self.BOXES, self.SCORES, jnp.array([0, 1, 0, 0]))
    np.testing.assert_array_equal(keep, [False, True, True, True])

  def test_minus_inf_scores_are_never_kept(self):
    keep = jax.jit(boxes.nms)(self.BOXES,
                              jnp.array([0.9, -jnp.inf, 0.7, 0.95]))
    np.testing.assert_array_equal(keep, [False, False, True, True])


def _plain_iou(a, b):
  inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
           * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize("seed", [0, 1])
def test_nms_matches_a_plain_python_greedy_loop(seed):
  rng = np.random.default_rng(seed)
  corner = rng.uniform(0, 20, (30, 2))
  b = np.concatenate([corner, corner + rng.uniform(2, 10, (30, 2))], axis=1)
  s = rng.uniform(0, 1, 30)
  expected = np.zeros(30, bool)
  for i in np.argsort(-s):
    if not any(_plain_iou(b[i], b[j]) > 0.4 for j in np.flatnonzero(expected)):
      expected[i] = True
  keep = jax.jit(boxes.nms, static_argnums=2)(jnp.asarray(b), jnp.asarray(s),
                                              0.4)
  np.testing.assert_array_equal(keep, expected)
  assert 0 < expected.sum() < 30  # some kept, some suppressed
