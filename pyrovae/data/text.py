r"""Sentences as data: a text file of one sentence per line, tokenised into padded integer
tensors with a vocabulary built from the training split.

A line is lower-cased and cut into words (letters and digits, with inner apostrophes:
``don't``) and single punctuation marks by :func:`tokenize`. Each sentence becomes its
token ids followed by ``<eos>`` and right-padded with ``<pad>`` to ``max_length + 1``
positions, so a data set's items have ``event_shape == (max_length + 1,)`` and dtype
``int64``. Sentences of more than ``max_length`` tokens are **dropped**, not truncated
(a truncated sentence would teach the decoder to stop mid-sentence); blank lines are
skipped.

The sentences are split into train and test (seeded, :func:`split_indices`) before the
vocabulary is built, from the training sentences alone (:meth:`Vocabulary.build`): the
four special tokens ``<pad>`` (id 0), ``<unk>`` (1), ``<bos>`` (2), ``<eos>`` (3), then the
words seen at least ``min_count`` times, most frequent first (ties alphabetically), at most
``max_vocab`` of them. A word of the test split (or of a later sentence) that is not in
the vocabulary maps to ``<unk>``. A vocabulary is plain JSON (:meth:`Vocabulary.save`,
:meth:`Vocabulary.load`): a run folder keeps its own as ``vocabulary.json`` so that
evaluating, sampling and resuming read the same ids.

References
----------
- Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio (2016), Generating Sentences from a
  Continuous Space.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyrovae.data.dataset import Dataset, split_indices
from pyrovae.errors import ConfigError, DataError

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "TEXT_SUFFIXES",
    "UNK",
    "Vocabulary",
    "load_text",
    "read_sentences",
    "tokenize",
    "validate_tokens",
]

#: the ids of the special tokens, first in every vocabulary
PAD, UNK, BOS, EOS = 0, 1, 2, 3
#: their spellings, in id order
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
#: file suffixes read as text, one sentence per line
TEXT_SUFFIXES = (".txt",)

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")
_FORMAT = "pyrovae-vocabulary"


def tokenize(sentence: str) -> list[str]:
    """Lower-case ``sentence`` and cut it into words and punctuation marks.

    >>> tokenize("Don't panic -- it's 42!")
    ["don't", 'panic', '-', '-', "it's", '42', '!']
    """
    return _TOKEN.findall(sentence.lower())


@dataclass(frozen=True)
class Vocabulary:
    """Tokens and their ids: ``tokens[i]`` has id ``i``; the first four are
    :data:`SPECIAL_TOKENS`.

    Parameters
    ----------
    tokens : sequence of str
        Every token in id order, the special tokens first.
    """

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise DataError(
                f"a vocabulary starts with {', '.join(SPECIAL_TOKENS)}; got {list(tokens[:4])}"
            )
        if len(set(tokens)) != len(tokens):
            repeated = next(t for t, n in Counter(tokens).items() if n > 1)
            raise DataError(f"the vocabulary lists {repeated!r} twice")
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(
        cls, sentences: Iterable[Sequence[str]], min_count: int = 1, max_vocab: int | None = None
    ) -> Vocabulary:
        """The special tokens, then the words of ``sentences`` (lists of tokens) seen at
        least ``min_count`` times, most frequent first, ties in alphabetical order, at
        most ``max_vocab`` words (all when ``None``)."""
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {min_count}")
        if max_vocab is not None and max_vocab < 1:
            raise ConfigError(f"max_vocab must be >= 1 words, got {max_vocab}")
        counts = Counter(t for sentence in sentences for t in sentence)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)  # a literal "<unk>" in the text is the unknown token
        words = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls((*SPECIAL_TOKENS, *words[:max_vocab]))

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """The ids of ``tokens``; a token outside the vocabulary is ``<unk>``."""
        ids = self._ids  # type: ignore[attr-defined]
        return [ids.get(t, UNK) for t in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """The sentence of ``ids`` up to its first ``<eos>`` (padding and ``<bos>`` left out),
        tokens joined by spaces."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i not in (PAD, BOS):
                words.append(self.tokens[i])
        return " ".join(words)

    def tensor(self, sentences: Sequence[str], max_length: int) -> torch.Tensor:
        """Sentences as an ``int64`` tensor ``(N, max_length + 1)``: ids, ``<eos>``, padding.

        Raises
        ------
        DataError
            If a sentence has no token or more than ``max_length`` tokens.
        """
        rows = torch.full((len(sentences), max_length + 1), PAD, dtype=torch.int64)
        for n, sentence in enumerate(sentences):
            tokens = tokenize(sentence)
            if not tokens or len(tokens) > max_length:
                raise DataError(
                    f"sentence {sentence!r} has {len(tokens)} tokens; a sentence needs 1 to "
                    f"{max_length} (--max-length)"
                )
            ids = [*self.encode(tokens), EOS]
            rows[n, : len(ids)] = torch.tensor(ids)
        return rows

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON: ``{"format": ..., "tokens": [...]}``."""
        from pyrovae.runfolder import write_json

        write_json({"format": _FORMAT, "tokens": list(self.tokens)}, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`; :class:`DataError` when it is not one."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"vocabulary file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read vocabulary {path}: {e}") from None
        if not isinstance(values, dict) or values.get("format") != _FORMAT:
            raise DataError(f"{path} is not a pyrovae vocabulary (no format {_FORMAT!r})")
        tokens = values.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{path}: 'tokens' must be a list of strings")
        return cls(tuple(tokens))


def validate_tokens(x: torch.Tensor, vocabulary_size: int, what: str = "sentences") -> None:
    """Raise :class:`DataError` unless ``x`` holds ``int64`` token ids in
    ``[0, vocabulary_size)``, each row a sentence ending in ``<eos>`` then padding."""
    if x.dtype != torch.int64:
        raise DataError(f"{what} must be int64 token ids, got {x.dtype}")
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{what} must be a (sentences, positions) tensor, got {tuple(x.shape)}")
    if int(x.min()) < 0 or int(x.max()) >= vocabulary_size:
        raise DataError(
            f"{what} hold token ids from {int(x.min())} to {int(x.max())}, outside the "
            f"vocabulary of {vocabulary_size}"
        )
    ends = (x == EOS).int().cumsum(-1)
    # after the first <eos> only padding; before it no padding; one <eos> per sentence
    after = torch.zeros_like(x, dtype=torch.bool)
    after[:, 1:] = ends[:, :-1] > 0
    if not bool((ends[:, -1] >= 1).all()) or bool((x[after] != PAD).any()):
        raise DataError(f"{what}: every row must be a sentence, <eos>, then only <pad>")
    if bool(((x == PAD) & (ends == 0)).any()):
        raise DataError(f"{what}: <pad> inside a sentence (before its <eos>)")


def read_sentences(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; :class:`DataError` when the file
    is missing, unreadable or holds none."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} does not exist; check the path")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from None
    sentences = [line.strip() for line in lines if tokenize(line)]
    if not sentences:
        raise DataError(f"{path} holds no sentence: write one sentence per line")
    return sentences


def load_text(
    path: Path,
    *,
    test_fraction: float,
    seed: int,
    limit: int | None,
    max_length: int = 30,
    min_count: int = 1,
    max_vocab: int | None = None,
    vocabulary: str | os.PathLike | None = None,
) -> Dataset:
    """A text file of sentences as a :class:`Dataset` of padded token ids.

    Parameters
    ----------
    path : Path
        UTF-8 text, one sentence per line (blank lines skipped).
    test_fraction, seed : float, int
        The seeded train/test split of the sentences.
    limit : int, optional
        Keep the first ``limit`` train and test sentences.
    max_length : int
        Drop the sentences of more than this many tokens; items have ``max_length + 1``
        positions (``<eos>``).
    min_count, max_vocab : int
        Build the vocabulary from the training sentences' words seen ``min_count`` times or
        more, the ``max_vocab`` most frequent (see :meth:`Vocabulary.build`).
    vocabulary : path-like, optional
        Read this vocabulary JSON instead of building one (a run's ``vocabulary.json``).

    Raises
    ------
    DataError
        For a missing or empty file, or when no sentence has ``max_length`` tokens or fewer.
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1 token, got {max_length}")
    lines = read_sentences(path)
    tokens = [tokenize(line) for line in lines]
    kept = [n for n, t in enumerate(tokens) if len(t) <= max_length]
    if len(kept) < 2:
        longest = min(len(t) for t in tokens)
        raise DataError(
            f"{path} has {len(kept)} sentence(s) of at most {max_length} tokens (--max-length; "
            f"the shortest has {longest}); a train and a test split need 2 or more: raise "
            "--max-length or add sentences"
        )
    train_index, test_index = split_indices(len(kept), test_fraction, seed, None, what=path.name)
    train_index, test_index = sorted(train_index)[:limit], sorted(test_index)[:limit]
    if vocabulary is not None:
        vocab = Vocabulary.load(vocabulary)
    else:
        vocab = Vocabulary.build((tokens[kept[i]] for i in train_index), min_count, max_vocab)

    def items(index: Sequence[int]) -> torch.Tensor:
        return vocab.tensor([lines[kept[i]] for i in index], max_length)

    return Dataset(
        name=path.stem,
        train=items(train_index),
        test=items(test_index),
        train_labels=None,
        test_labels=None,
        vocabulary=vocab,
    )
