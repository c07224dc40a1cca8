"""Fixtures of the convolution tests."""

import pytest

from cnn_jax.conv import onednn_verify


@pytest.fixture(name="fresh_verdicts")
def _fresh_verdicts(monkeypatch, tmp_path):
  """An empty oneDNN verdict store in tmp_path (the machine's own is
  untouched)."""
  path = tmp_path / "verdicts.json"
  monkeypatch.setattr(onednn_verify, "verdict_file", lambda: path)
  monkeypatch.setattr(onednn_verify, "_verdicts", {})
  monkeypatch.setattr(onednn_verify, "_loaded_from", None)
  monkeypatch.setattr(onednn_verify, "_warned", set())
  return path
