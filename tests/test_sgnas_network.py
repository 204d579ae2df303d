"""The SGNAS stand-alone network (pcdarts_jax/sgnas/network.py) and its training
through the one trainer: lookup-table FLOPs = counted MACs, block structure, SE,
h-swish, dropout, config validation, and launch/train.py + launch/evaluate.py
end to end on the digits config."""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sgnas_cifar100_train
from configs import sgnas_cifar10_train
from configs import sgnas_digits_train
from configs import sgnas_imagenet_train
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.nn import initializers
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.train import networks
from pcdarts_jax.train import train as trainer
from pcdarts_jax.sgnas import flops as flops_lib
from pcdarts_jax.sgnas import layout as layout_lib
from pcdarts_jax.sgnas import network as sgnas_network
from tests import compile_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_ACCURACY_BAR = 0.85  # configs/sgnas_digits_train.py measured 0.963 (chance 0.1).
ConfigError = config_validation.ConfigError


def _config(layout='digits', **model):
  """The digits train config, or the CIFAR-100 one for layout 'cifar'; the grouped
  depthwise conv runs op by op fastest (same function and shapes as 'dense')."""
  config = (sgnas_digits_train if layout == 'digits' else sgnas_cifar100_train).get_config()
  config.model.depthwise_impl = 'conv'
  for name, value in model.items():
    config.model[name] = value
  return config


def _shape(config):
  return network.input_shape(config)


def _build(config, choices):
  return networks.build_network(config, genotype=np.asarray(choices, np.int32))


# ----------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize('layout,count', [('digits', 6), ('cifar', 3)])
def test_lookup_table_flops_equal_the_networks_counted_macs(layout, count):
  config = _config(layout)
  lay = layout_lib.layout_of_config(config)
  table = flops_lib.lookup_table(lay)
  archs = flops_lib.random_architectures(lay, count, np.random.default_rng(7))
  archs[0] = 0                                # every group 3x3: expansion 6 everywhere
  archs[1, :, 1:] = layout_lib.SKIP           # expansion 1 everywhere (expand conv kept)
  seen = set()
  for choices in archs:
    layout_lib.check_choices(choices, lay)
    expected = flops_lib.architecture_macs(choices, table)
    counted = network.count_macs(_build(config, choices), _shape(config))
    assert isinstance(counted, int) and counted == expected, layout_lib.to_string(choices)
    seen.add(expected)
  assert len(seen) == count  # Different architectures, different FLOPs.


def test_published_architectures_match_their_reported_flops():
  config = sgnas_imagenet_train.get_config()
  lay = layout_lib.layout_of_config(config)
  table = flops_lib.lookup_table(lay)
  reported = {'SGNAS_A': 373, 'SGNAS_B': 326, 'SGNAS_C': 281}
  for name, mflops in reported.items():
    choices = networks.resolve_architecture(config, name)
    assert abs(flops_lib.architecture_macs(choices, table) / 1e6 - mflops) < 1, name
  a = networks.resolve_architecture(config)  # The config's default: SGNAS_A.
  assert flops_lib.architecture_macs(a, table) == 372_430_304
  assert network.count_macs(networks.build_network(config), _shape(config)) == 372_430_304


# ---------------------------------------------------------------- the network


def _variables(model, shape, seed=0):
  return initializers.init_variables(model, jax.random.PRNGKey(seed), jnp.zeros(shape))


def test_output_shapes_dtypes_and_no_auxiliary_logits():
  config = _config()
  model = networks.build_network(config)
  assert isinstance(model, sgnas_network.SGNASNetwork)
  shape = (3,) + _shape(config)[1:]
  variables = _variables(model, shape)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  # Each program runs once: compiled without LLVM's optimizations.
  logits, aux = compile_options.jit_once(lambda v, x: model.apply(v, x, train=False))(
      variables, x)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32 and aux is None
  assert np.all(np.isfinite(logits))
  logits_eval = logits
  (logits, aux), new = compile_options.jit_once(lambda v, x: model.apply(
      v, x, train=True, drop_path_prob=0.3, mutable=['batch_stats']))(variables, x)
  assert logits.shape == (3, 10) and aux is None
  assert not np.array_equal(new['batch_stats']['stem_bn']['mean'],
                            variables['batch_stats']['stem_bn']['mean'])
  half = model.clone(dtype='bfloat16')
  logits16, _ = compile_options.jit_once(lambda v, x: half.apply(v, x, train=False))(
      variables, x)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits_eval, atol=0.05)
  # Per layer: the expand conv to e·C_in, one depthwise kernel per kernel size used.
  params = variables['params']
  lay = layout_lib.layout_of_config(config)
  for i, (layer, row) in enumerate(zip(lay.layers, model.choices)):
    kernels = layout_lib.group_of_choices(row)
    block = params[f'layer{i}']
    assert block['expand']['kernel'].shape == (1, 1, layer.c_in, len(kernels) * layer.c_in)
    assert {k for k in block if k.startswith('dw') and k != 'dw_bn'} == {
        f'dw{k}x{k}' for k in kernels}
    for k in set(kernels):
      assert block[f'dw{k}x{k}']['kernel'].shape == (k, k, 1, kernels.count(k) * layer.c_in)
    assert block['project']['kernel'].shape == (1, 1, len(kernels) * layer.c_in, layer.c_out)
  assert 'expand' not in params['first'] and set(params['first']) >= {'dw3x3', 'project'}


def test_residual_exactly_where_the_layout_says():
  """With the project BN's scale and shift zeroed a block outputs its input
  where it has the residual, zeros elsewhere."""
  lay = layout_lib.make_layout('digits', 8, 1, 10)
  blocks = [(lay.stem_channels, lay.first_channels, 1, (3,), False, lay.stem_size)]
  blocks += [(l.c_in, l.c_out, l.stride, (3, 5), True, l.size_in) for l in lay.layers]
  flags = [l.residual for l in lay.layers]
  assert any(flags) and not all(flags)
  for c_in, c_out, stride, kernels, expand, size in blocks:
    block = sgnas_network.MBConv(c_out, kernels, stride, expand=expand, depthwise_impl='conv')
    x = jax.random.normal(jax.random.PRNGKey(c_in + stride), (2, size, size, c_in))
    variables = flax.core.unfreeze(_variables(block, x.shape))
    apply = compile_options.jit_once(lambda v, x, block=block: block.apply(v, x, train=False))
    out = apply(variables, x)
    assert out.shape == (2, -(-size // stride), -(-size // stride), c_out)
    assert np.abs(out).max() > 0
    variables['params']['project_bn'] = jax.tree.map(jnp.zeros_like,
                                                     variables['params']['project_bn'])
    out = apply(variables, x)
    residual = stride == 1 and c_in == c_out
    np.testing.assert_allclose(out, x if residual else jnp.zeros_like(out), atol=1e-6)


def test_squeeze_excite_adds_its_parameters_and_macs():
  config = _config()
  lay = layout_lib.layout_of_config(config)
  choices = layout_lib.load(config.genotype, lay)
  shape = _shape(config)
  plain = _build(config, choices)
  config.model.se = True
  se = _build(config, choices)
  hidden = [lay.stem_channels] + [len(layout_lib.group_of_choices(row)) * layer.c_in
                                  for layer, row in zip(lay.layers, choices)]
  squeezed = [max(1, h // 4) for h in hidden]
  extra_params = sum(2 * h * s + s + h for h, s in zip(hidden, squeezed))
  extra_macs = sum(2 * h * s for h, s in zip(hidden, squeezed))
  assert network.count_params(se, shape) - network.count_params(plain, shape) == extra_params
  assert network.count_macs(se, shape) - network.count_macs(plain, shape) == extra_macs
  assert network.count_macs(plain, shape) == flops_lib.architecture_macs(
      choices, flops_lib.lookup_table(lay))
  assert set(_variables(se, shape)['params']['layer0']['se']) == {'squeeze', 'excite'}


def test_hard_sigmoid_and_hard_swish_by_hand():
  x = jnp.array([-5.0, -3.0, -1.0, 0.0, 1.5, 3.0, 4.0])
  np.testing.assert_allclose(sgnas_network.hard_sigmoid(x),
                             [0.0, 0.0, 1 / 3, 0.5, 0.75, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(sgnas_network.hard_swish(x),
                             [0.0, 0.0, -1 / 3, 0.0, 1.125, 3.0, 4.0], rtol=1e-6)
  # The network applies model.activation: the stem's BN output -> the first block's input.
  config = _config()
  x = jax.random.normal(jax.random.PRNGKey(2), (2,) + _shape(config)[1:])
  for name, fn in (('relu6', jax.nn.relu6), ('hswish', sgnas_network.hard_swish)):
    config.model.activation = name
    model = networks.build_network(config)

    def inputs_seen(variables, model=model):
      seen = {}

      def grab(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == '__call__' and context.module.name in ('stem_bn', 'first'):
          seen[context.module.name] = out if context.module.name == 'stem_bn' else args[0]
        return out

      with flax.linen.intercept_methods(grab):
        model.apply(variables, x, train=False)
      return seen

    # Compiled (an eager network runs op by op): what the two modules saw, returned.
    seen = compile_options.jit_once(inputs_seen)(_variables(model, x.shape))
    assert np.min(seen['stem_bn']) < -0.5 and np.max(seen['stem_bn']) > 0.5
    np.testing.assert_allclose(seen['first'], fn(seen['stem_bn']), rtol=1e-6)


def test_dropout_masks_follow_global_positions():
  x = jnp.ones((8, 64))
  index = jnp.arange(8) + 100
  rng = jax.random.PRNGKey(3)
  out = sgnas_network.example_dropout(x, 0.25, rng, index)
  np.testing.assert_allclose(np.unique(np.asarray(out)), [0.0, 1 / 0.75], rtol=1e-6)
  assert 0.15 < float(jnp.mean(out == 0)) < 0.35
  # A device holding examples 4..7 draws the masks of the whole-batch run.
  np.testing.assert_array_equal(sgnas_network.example_dropout(x[4:], 0.25, rng, index[4:]),
                                out[4:])
  config = _config(dropout=0.5)
  model = networks.build_network(config)
  variables = _variables(model, (4,) + _shape(config)[1:])
  x = jax.random.normal(jax.random.PRNGKey(4), (4,) + _shape(config)[1:])
  train = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=['batch_stats'],
                                          rngs={network.DROP_PATH_RNG: key})[0][0])
  assert not np.allclose(train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(1)))


# ------------------------------------------------------------------ validation


def test_published_configs_validate():
  for module, devices in ((sgnas_cifar100_train, 8), (sgnas_cifar10_train, 8),
                          (sgnas_imagenet_train, 8), (sgnas_digits_train, 2)):
    config = module.get_config()
    trainer.validate_train_config(config, num_devices=devices)
    for field in ('init_channels', 'layers', 'auxiliary', 'drop_path_prob'):
      assert field not in config.model  # DARTS-only fields are not asked for.


def _write_architecture(tmp_path, layout_name, choices):
  lay = layout_lib.make_layout(layout_name, 32, 3, 100)
  path = tmp_path / f'{layout_name}.json'
  path.write_text(json.dumps(layout_lib.to_dict(choices, lay)))
  return str(path)


@pytest.mark.parametrize('field,value,message', [
    ('model.layout', 'mobilenet',
     r"model\.layout='mobilenet' is not one of \('imagenet', 'cifar', 'digits'\)"),
    ('genotype', 'x5xxxx|3xxxxx|357xxx|53xxxx|3577xx|3x5xxx',
     r"genotype='x5xxxx.*group 0 of layer 0 skips"),
    ('genotype', '35xxxx|3xxxxx|357xxx|53xxxx|3577xx',
     r"genotype='35xxxx.*shape \(6, 6\).*layout 'digits', got int32 \(5, 6\)"),
    ('genotype', 'SGNAS_A',
     r"genotype='SGNAS_A': expected .* shape \(6, 6\).*layout 'digits'.*\(19, 6\)"),
    ('genotype', 'PCDARTS', r"genotype='PCDARTS' is neither a published architecture"),
    ('genotype', '/no/such/architecture.json',
     r"genotype='/no/such/architecture\.json' is neither"),
    ('model.num_classes', 100, r'model\.num_classes=100 but digits has 10 classes'),
    ('model.se', 1, r'model\.se=1 must be True or False'),
    ('model.activation', 'swish',
     r"model\.activation='swish' is not one of \('relu6', 'hswish'\)"),
    ('model.dropout', 1.0, r'model\.dropout=1\.0 must be a number in \[0\.0, 1\.0\)'),
    ('model.depthwise_impl', 'fft', r"model\.depthwise_impl='fft' is not one of"),
])
def test_validation_names_the_field(field, value, message):
  config = sgnas_digits_train.get_config()
  section, _, name = field.rpartition('.')
  with config.ignore_type():  # model.se=1 is not a bool
    (config[section] if section else config)[name] = value
  with pytest.raises(ConfigError, match=message):
    trainer.validate_train_config(config)


def test_validation_of_architecture_files_and_sgnas_only_rules(tmp_path):
  config = sgnas_digits_train.get_config()
  cifar = _write_architecture(tmp_path, 'cifar', np.zeros((19, 6), np.int32))
  config.genotype = cifar
  with pytest.raises(ConfigError, match=r"genotype=.*cifar\.json' was made for layout "
                     r"'cifar', not model\.layout='digits'"):
    trainer.validate_train_config(config)
  config.model.layout = 'cifar'  # The file fits the cifar layout, on 8x8 digits too.
  trainer.validate_train_config(config)
  assert layout_lib.to_string(networks.resolve_architecture(config)) == '|'.join(['333333'] * 19)
  config = sgnas_digits_train.get_config()
  config.model.drop_path_prob = 0.2
  with pytest.raises(ConfigError, match=r"model\.drop_path_prob=0\.2: model\.network="
                     r"'sgnas' has no drop-path"):
    trainer.validate_train_config(config)
  with pytest.raises(ConfigError, match=r'PyTorch state_dict.*not .sgnas'):
    trainer.evaluate_checkpoint(sgnas_digits_train.get_config(), torch_state_dict={})


# ------------------------------------------------------------------ end to end


def test_digits_train_evaluate_and_resume(tmp_path):
  """launch/train.py with configs/sgnas_digits_train.py, launch/evaluate.py on its
  workdir (another --config.genotype with it is refused: the weights fit only the
  workdir's genotype.json),
  then the finished run resumed in-process."""
  workdir = str(tmp_path / 'train')
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run(
      [sys.executable, '-m', 'launch.train', '--config=configs/sgnas_digits_train.py',
       f'--workdir={workdir}', '--compilation_cache='],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  config = sgnas_digits_train.get_config()
  lay = layout_lib.layout_of_config(config)
  choices = layout_lib.from_string(sgnas_digits_train.DEFAULT_ARCHITECTURE)
  macs = flops_lib.architecture_macs(choices, flops_lib.lookup_table(lay))
  with open(os.path.join(workdir, 'genotype.json')) as f:
    record = json.load(f)
  assert record == layout_lib.to_dict(choices, lay, macs=macs, mflops=macs / 1e6,
                                      expansions=[2, 1, 3, 2, 4, 2])
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['test']['accuracy'] >= DIGITS_ACCURACY_BAR, summary['test']
  assert summary['epochs'] == 10 and summary['network'] == 'sgnas'
  assert summary['genotype'] == record and summary['macs'] == macs == 132_800
  assert summary['parameters'] == network.count_params(networks.build_network(config),
                                                       _shape(config))
  assert not os.path.exists(os.path.join(workdir, 'plots'))  # No DARTS cells to draw.

  other = '333333|3xxxxx|3xxxxx|3xxxxx|3xxxxx|3xxxxx'
  evaluate = [sys.executable, '-m', 'launch.evaluate', '--config=configs/sgnas_digits_train.py',
              f'--workdir={workdir}']
  # Another architecture does not fit the checkpoint's weights: refused in one line.
  run = subprocess.run(evaluate + [f'--config.genotype={other}'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-3000:]
  assert 'error: --config.genotype does not go with --workdir' in run.stderr
  run = subprocess.run(evaluate, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result['top1_error'] == pytest.approx(1 - summary['test']['accuracy'])
  assert result['top5_error'] == pytest.approx(1 - summary['test']['top5_accuracy'])
  assert result['images'] == 297

  config.monitor.tensorboard = False  # A resumable change.
  again = trainer.train(config, workdir)  # Finished: nothing is redone or rewritten.
  assert again == summary
  config.genotype = other
  with pytest.raises(ConfigError, match=r'genotype'):
    trainer.train(config, workdir)
