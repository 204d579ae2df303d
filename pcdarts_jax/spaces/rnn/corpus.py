"""Word-level corpora for the RNN search: the PTB / WikiText-2 file layout and an
offline corpus from the Python documentation that ships with Python.

The file layout is the one of the DARTS (rnn/data.py) and AWD-LSTM readers: a
directory with train.txt, valid.txt and test.txt, whitespace-separated words, an
`<eos>` token after each line. Streams are batch-first: `batchify` cuts a split
into B contiguous rows [B, N] (the reference's [N, B], transposed).
"""

import collections
import os
import re
from typing import Dict, Iterable, List, NamedTuple, Sequence, Tuple

import numpy as np

from pcdarts_jax.run import config_fields

EOS = '<eos>'
UNK = '<unk>'
SPLITS = ('train', 'valid', 'test')
NAMES = ('pydoc', 'ptb', 'wikitext2')  # data.name: the offline corpus, or a PTB-layout one


class Corpus(NamedTuple):
  vocab: Tuple[str, ...]   # id -> word
  train: np.ndarray        # int32 token ids
  valid: np.ndarray
  test: np.ndarray

  @property
  def ntokens(self) -> int:
    return len(self.vocab)


def corpus_from_lines(train: Sequence[str], valid: Sequence[str],
                      test: Sequence[str]) -> Corpus:
  """Ids of each split's words (line.split() + <eos> per line). The vocabulary is the
  train words in order of first appearance (the reference's ids for PTB and
  WikiText-2, where every valid/test word is a train word); a valid/test word that
  train lacks becomes <unk> (added last if train has none)."""
  word2idx: Dict[str, int] = {}
  for line in train:
    for word in line.split() + [EOS]:
      word2idx.setdefault(word, len(word2idx))

  def ids(lines):
    out = []
    for line in lines:
      for word in line.split() + [EOS]:
        if word not in word2idx:
          word2idx.setdefault(UNK, len(word2idx))
          word = UNK
        out.append(word2idx[word])
    return np.asarray(out, np.int32)

  splits = [ids(lines) for lines in (train, valid, test)]
  vocab = tuple(sorted(word2idx, key=word2idx.get))
  return Corpus(vocab, *splits)


def read_corpus(data_dir: str) -> Corpus:
  """The corpus in data_dir/{train,valid,test}.txt (PTB, WikiText-2 layout)."""
  data_dir = os.path.expanduser(data_dir)
  lines = []
  for split in SPLITS:
    path = os.path.join(data_dir, f'{split}.txt')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'data.data_dir={data_dir!r} lacks {split}.txt (expected '
                              'train.txt, valid.txt, test.txt as in PTB / WikiText-2).')
    with open(path, encoding='utf-8') as f:
      lines.append(f.readlines())
  return corpus_from_lines(*lines)


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:\.[0-9]+)?")


def tokenize_text(line: str) -> List[str]:
  """PTB-style words of a line: lower case, letters (with one apostrophe) and numbers
  (as N); punctuation and symbols dropped."""
  return ['N' if w[0].isdigit() else w for w in _WORD.findall(line.lower())]


def pydoc_lines() -> List[str]:
  """The non-empty tokenised lines of pydoc_data.topics (Python's own help texts on
  its statements and data model), topics in sorted order."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  lines = []
  for name in sorted(topics.topics):
    for line in topics.topics[name].splitlines():
      words = tokenize_text(line)
      if words:
        lines.append(' '.join(words))
  return lines


def pydoc_corpus(min_count: int, portions: Tuple[float, float]) -> Corpus:
  """An offline word-level corpus from pydoc_data.topics (~74k tokens with <eos>).

  The lines are split contiguously: the first `portions[0]` of them train, the next
  `portions[1]` valid, the rest test. Words seen fewer than `min_count` times in
  the train part become <unk> everywhere (as PTB's 10k-word vocabulary), so the
  vocabulary (~1.6k words; 59k/8k/7k tokens) fits a small model. Deterministic for
  a given Python version (the topics change between versions)."""
  lines = pydoc_lines()
  n_train = int(len(lines) * portions[0])
  n_valid = int(len(lines) * portions[1])
  parts = (lines[:n_train], lines[n_train:n_train + n_valid], lines[n_train + n_valid:])
  counts = collections.Counter(w for line in parts[0] for w in line.split())
  keep = lambda w: w if counts[w] >= min_count else UNK
  parts = [[' '.join(keep(w) for w in line.split()) for line in part] for part in parts]
  return corpus_from_lines(*parts)


def load_corpus(data_config) -> Corpus:
  """The corpus of a config's `data` section: name pydoc (offline; pydoc_min_count,
  pydoc_portions) or ptb / wikitext2 (data_dir in the PTB layout)."""
  name = data_config.name
  if name == 'pydoc':
    return pydoc_corpus(data_config.pydoc_min_count, tuple(data_config.pydoc_portions))
  if name in ('ptb', 'wikitext2'):
    if not data_config.data_dir:
      raise ValueError(f'data.data_dir is not set: data.name={name!r} reads '
                       '{train,valid,test}.txt from it.')
    return read_corpus(data_config.data_dir)
  raise ValueError(f"data.name={name!r} is not one of ('pydoc', 'ptb', 'wikitext2').")


def validate_data(d):
  """The `data` section of an RNN config; ConfigError (one line naming the field and
  what is allowed). A PTB-layout corpus must be on disk."""
  require = config_fields.require
  require(d.name in NAMES, f'data.name={d.name!r} is not one of {NAMES}.')
  if d.name == 'pydoc':
    require(config_fields.is_int(d.pydoc_min_count) and d.pydoc_min_count >= 1,
            f'data.pydoc_min_count={d.pydoc_min_count!r} must be an integer >= 1.')
    portions = tuple(d.pydoc_portions)
    require(len(portions) == 2 and all(isinstance(p, (int, float)) and p > 0 for p in portions)
            and sum(portions) < 1,
            f'data.pydoc_portions={portions!r} must be (train, valid) shares > 0 summing to '
            f'less than 1 (the rest is test).')
    return
  require(isinstance(d.data_dir, str) and d.data_dir,
          f'data.data_dir={d.data_dir!r}: data.name={d.name!r} reads train.txt, valid.txt and '
          f'test.txt from it (or use data.name=pydoc, offline).')
  missing = [f'{split}.txt' for split in SPLITS
             if not os.path.isfile(os.path.join(os.path.expanduser(d.data_dir), f'{split}.txt'))]
  require(not missing, f'data.data_dir={d.data_dir!r} lacks {", ".join(missing)} (expected '
                       f'train.txt, valid.txt, test.txt as in PTB / WikiText-2).')


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """[B, N]: the stream cut into B contiguous rows, the tail that does not fill a row
  dropped (rnn/utils.py batchify, batch-first)."""
  n = len(ids) // batch_size
  if n < 2:
    raise ValueError(f'{len(ids)} tokens make no batch of {batch_size} rows of 2 or more.')
  return np.asarray(ids[:n * batch_size]).reshape(batch_size, n)


def get_batch(source: np.ndarray, i: int, seq_len: int):
  """(inputs, targets) [B, L] at column i: L = min(seq_len, N - 1 - i), targets the
  inputs shifted by one (rnn/utils.py get_batch)."""
  seq_len = min(seq_len, source.shape[1] - 1 - i)
  return source[:, i:i + seq_len], source[:, i + 1:i + 1 + seq_len]


def eval_chunks(n: int, bptt: int) -> Iterable[int]:
  """Start columns of the evaluation windows over a [B, n] stream (step bptt)."""
  return range(0, n - 1, bptt)
