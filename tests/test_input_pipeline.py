"""ImageNet-subset search inputs: subset selection, the streaming pipeline on
tfds mock data, the ImageNet supernet's shapes and the clear data errors."""

import numpy as np
import pytest

from configs import imagenet_search
from pcdarts_jax.data import datasets as data
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import augment as augment_lib
from pcdarts_jax.spaces.darts import supernet


def _labels():
  # 7 classes of uneven sizes (1300 images like ImageNet's largest, down to 40).
  sizes = [1300, 1300, 732, 1000, 40, 260, 999]
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
  return np.random.default_rng(0).permutation(labels), sizes


def test_subsets_disjoint_proportional_reproducible():
  labels, sizes = _labels()
  weights, arch = input_pipeline.select_subsets(labels, (0.1, 0.025), seed=3)
  assert not set(weights) & set(arch)
  for cls, n in enumerate(sizes):
    # Cumulative rounding half up: round(0.1 n) and round(0.125 n) - round(0.1 n).
    w = int(np.floor(0.1 * n + 0.5))
    a = int(np.floor(0.125 * n + 0.5)) - w
    assert np.sum(labels[weights] == cls) == w
    assert np.sum(labels[arch] == cls) == a
  assert len(weights) == 563 and len(arch) == 143
  again = input_pipeline.select_subsets(labels, (0.1, 0.025), seed=3)
  np.testing.assert_array_equal(again[0], weights)
  np.testing.assert_array_equal(again[1], arch)
  other = input_pipeline.select_subsets(labels, (0.1, 0.025), seed=4)
  assert not np.array_equal(other[0], weights)
  assert len(other[0]) == len(weights)  # Same per-class counts, other images.


def test_subset_fractions_are_checked():
  with pytest.raises(ValueError, match='sum to <= 1'):
    input_pipeline.select_subsets(np.zeros(10), (0.8, 0.3), seed=0)


def tiny_imagenet_config(tmp_path, mock_examples=256):
  config = imagenet_search.get_config()
  config.data.mock_examples = mock_examples
  config.data.subset_dir = str(tmp_path / 'subsets')
  config.data.train_fraction = 0.5
  config.data.arch_fraction = 0.5
  config.data.image_size = 64
  config.data.shuffle_buffer = 64
  config.search.batch_size = 8
  config.search.eval_batch_size = 16
  return config


def test_streaming_pipeline_on_mock_imagenet(tmp_path):
  config = tiny_imagenet_config(tmp_path)
  inputs = input_pipeline.search_inputs(config)
  subsets = input_pipeline.subset_keys(config.data, config.data.subset_seed)
  weight_keys, arch_keys = subsets['weights'], subsets['arch']
  assert len(subsets['weights_index']) == len(weight_keys) and int(subsets['total']) == 256
  assert not set(weight_keys.tolist()) & set(arch_keys.tolist())
  assert inputs.train_size == len(weight_keys) and inputs.arch_size == len(arch_keys)
  assert inputs.train.steps_per_epoch == len(weight_keys) // 8
  batch = next(inputs.train)
  assert batch['image'].shape == (8, 64, 64, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].max() < 1000
  second = next(inputs.train)
  # Resuming at position 1 of epoch 0 gives the same next batch (same crops).
  state = inputs.train.state()
  third = next(inputs.train)
  inputs.train.restore(state)
  np.testing.assert_array_equal(next(inputs.train)['image'], third['image'])
  assert not np.array_equal(second['image'], third['image'])
  # Validation: every arch image once, masked padding, centre crops.
  evals = list(inputs.eval_batches(16))
  assert sum(float(b['mask'].sum()) for b in evals) == len(arch_keys)
  assert all(b['image'].shape == (16, 64, 64, 3) for b in evals)


def test_subset_cache_reused_and_seed_dependent(tmp_path):
  config = tiny_imagenet_config(tmp_path)
  first = input_pipeline.subset_keys(config.data, 0)
  again = input_pipeline.subset_keys(config.data, 0)
  np.testing.assert_array_equal(first['weights'], again['weights'])
  other = input_pipeline.subset_keys(config.data, 1)
  assert set(other['weights'].tolist()) != set(first['weights'].tolist())


def test_device_normalisation_uses_imagenet_statistics():
  config = imagenet_search.get_config()
  augment = data.train_augment(config.data)
  image = np.full((2, 8, 8, 3), 255, np.uint8)
  out = np.asarray(augment_lib.augment_examples(augment, np.zeros(2, np.uint32), image))
  expected = (1.0 - np.array(config.data.mean)) / np.array(config.data.std)
  np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)


def test_missing_manual_dir_says_how_to_prepare(tmp_path):
  config = imagenet_search.get_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path / 'absent')
  with pytest.raises(data.DataError) as info:
    input_pipeline.search_inputs(config)
  message = str(info.value)
  assert 'data.manual_dir' in message and 'does not exist' in message
  assert 'ILSVRC2012_img_train.tar' in message and 'download_and_prepare' in message
  (tmp_path / 'empty').mkdir()
  config.data.manual_dir = str(tmp_path / 'empty')
  with pytest.raises(data.DataError, match='is empty'):
    input_pipeline.search_inputs(config)


def test_imagenet_supernet_stem_reduces_224_to_28():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = imagenet_search.get_config()
  config.model.init_channels = 4
  config.model.layers = 3
  model = supernet.build_supernet(config)
  x = jnp.zeros((2, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape == (2, 1000)
  _, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                            mutable=['intermediates']), variables)
  inter = state['intermediates']
  assert inter['stem0_bn2']['__call__'][0].shape == (2, 56, 56, 12)  # s0: stride 4
  assert inter['stem1_bn']['__call__'][0].shape == (2, 28, 28, 12)   # s1: 224 -> 28


def test_device_prefetch_reports_the_position_of_batches_handed_out():
  dataset = data.ArraySet(np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1),
                          np.arange(40, dtype=np.int32))
  make = lambda: input_pipeline.HostSlice(data.EpochIterator(dataset, 4, seed=0))
  prefetched = input_pipeline.DevicePrefetch(make(), size=2)
  plain = make()
  for _ in range(3):
    got, want = next(prefetched), next(plain)
    np.testing.assert_array_equal(np.asarray(got['label']).reshape(-1), want['label'])
  # Two more batches are already on the device, but the position is 3.
  assert prefetched.state() == {'epoch': 0, 'position': 3} == plain.state()
  resumed = input_pipeline.DevicePrefetch(make(), size=2)
  resumed.restore(prefetched.state())
  np.testing.assert_array_equal(np.asarray(next(resumed)['label']).reshape(-1),
                                next(plain)['label'])


def test_host_shares_partition_the_split():
  ranges = [input_pipeline.host_range(10, p, 3) for p in range(3)]
  assert ranges == [(0, 3), (3, 6), (6, 10)]
  import jax  # pylint: disable=g-import-not-at-top
  # One process: it holds every subset example.
  assert input_pipeline.share_counts(np.array([9, 1, 4]), 10).tolist() == [3]
  assert jax.process_count() == 1


def test_trainer_imagenet_source_on_mock_data(tmp_path):
  from configs import imagenet_train  # pylint: disable=g-import-not-at-top
  config = imagenet_train.get_config()
  config.data.mock_examples = 24
  config.data.image_size = 64
  config.data.shuffle_buffer = 16
  config.train.batch_size = 8
  config.train.eval_batch_size = 16
  source = input_pipeline.train_data_source(config)
  assert source.steps_per_epoch == 3 and source.test_size == 24
  batches = source.train_batches(4)  # Epoch 1, position 1.
  batch = next(batches)
  assert batch['image'].shape == (8, 64, 64, 3) and batch['image'].dtype == np.uint8
  tests = list(source.test_batches())
  assert len(tests) == 2 and sum(float(b['mask'].sum()) for b in tests) == 24
