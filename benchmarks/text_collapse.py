r"""Posterior collapse of the sentence VAE (Bowman et al. 2016) and its remedies, on sentences
from Debian's ``fortunes`` package.

The corpus: every fortune file under ``/usr/share/games/fortunes`` (``apt-get install
fortunes``; the offensive ones are a separate package and not read), its ``%``-separated
texts joined into lines, attribution lines (``-- Author``) left out, and each text cut into
sentences after ``.``, ``!`` or ``?``; sentences of 3 to ``--max-length`` tokens are kept
and written one per line to ``OUT/fortunes.txt``, which every row trains on with
``--data`` (the train/test split, 10% held out by default, and the vocabulary, the
``--max-vocab`` most frequent training words, are the run's own: :mod:`pyrovae.data.text`).

Each row trains the same model (``--model sentence``: GRU encoder and decoder, the same
sizes, seed and initial weights) for the same epochs and differs only in the objective or
the word dropout:

- ``ELBO``: ``Trace_ELBO``, :math:`\beta = 1` throughout;
- ``KL annealing``: :math:`\beta` rises linearly from 0 to 1 over the first half of the
  epochs (``--kl-schedule linear``);
- ``word dropout``: the ELBO with ``--word-dropout`` (words the decoder reads replaced
  by ``<unk>``);
- ``free bits``: ``FreeBits_ELBO`` with :math:`\lambda` nats per dimension;
- ``annealing + word dropout``: both (Bowman et al.'s recipe).

Columns, on the held-out sentences: the KL and active units (Burda et al.'s threshold
0.01), the NLL per token from the IWAE bound with ``K`` importance samples, the
perplexity :math:`\exp(\mathrm{NLL/token})`, the teacher-forced reconstruction accuracy
at the posterior mean, and the training seconds (:meth:`pyrovae.variants.SentenceVAE.
evaluate_heldout`). Every row is a run folder ``OUT/<row>`` that ``pyrovae sample`` and
``pyrovae interpolate`` read.

Examples
--------
::

    python benchmarks/text_collapse.py --out /work/runs/text
    python benchmarks/text_collapse.py --quick --out /tmp/text-quick
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Parser, environment, markdown_table, report
from pyrovae import Config, fit
from pyrovae.data import tokenize

FORTUNES = Path("/usr/share/games/fortunes")
FULL = {"epochs": 10, "num_samples": 50, "max_sentences": None}
QUICK = {"epochs": 1, "num_samples": 5, "max_sentences": 600}
COLUMNS = [
    "objective",
    "KL",
    "active units",
    "NLL / token (IWAE)",
    "perplexity",
    "reconstruction accuracy",
    "seconds",
]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def fortune_sentences(folder: Path, max_length: int) -> list[str]:
    """The sentences of the fortune files in ``folder`` of 3 to ``max_length`` tokens, in
    file order (see the module docstring)."""
    sentences = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in re.split(r"^%$", text, flags=re.MULTILINE):
            lines = [ln.strip() for ln in fortune.splitlines()]
            body = " ".join(ln for ln in lines if ln and not ln.startswith("--"))
            for sentence in _SENTENCE_END.split(body):
                if 3 <= len(tokenize(sentence)) <= max_length:
                    sentences.append(sentence)
    return sentences


def rows(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The settings compared: changes against the plain ELBO."""
    warmup = {"kl_schedule": "linear", "warmup_epochs": max(1, args.epochs // 2)}
    dropout = {"word_dropout": args.word_dropout}
    return {
        "ELBO": {},
        "KL annealing": warmup,
        f"word dropout ({args.word_dropout:g})": dropout,
        f"free bits (lambda = {args.free_bits:g})": {
            "elbo": "FreeBits_ELBO",
            "free_bits": args.free_bits,
        },
        "annealing + word dropout": {**warmup, **dropout},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of the corpus and runs")
    parser.add_argument(
        "--fortunes", type=Path, default=FORTUNES, help=f"the fortune files (default {FORTUNES})"
    )
    parser.add_argument("--epochs", type=int, help="epochs per row (default 10; --quick 1)")
    parser.add_argument("--latent-dim", type=int, default=16, help="dimension of z")
    parser.add_argument("--rnn-size", type=int, default=128, help="GRU state size")
    parser.add_argument("--embedding-dim", type=int, default=64, help="token embedding size")
    parser.add_argument("--max-length", type=int, default=12, help="longest sentence kept")
    parser.add_argument("--max-vocab", type=int, default=2000, help="words in the vocabulary")
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="share of sentences held out"
    )
    parser.add_argument("--word-dropout", type=float, default=0.5, help="word dropout rate")
    parser.add_argument("--free-bits", type=float, default=0.25, help="lambda, nats per dim")
    parser.add_argument(
        "-k", "--num-samples", type=int, help="importance samples for the IWAE (default 50)"
    )
    parser.add_argument(
        "--max-sentences", type=int, help="keep only the first N sentences (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of data split and weights")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.fortunes.is_dir():
        parser.error(
            f"{args.fortunes} is missing: install Debian's fortunes (apt-get install fortunes)"
        )
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    sentences = fortune_sentences(args.fortunes, args.max_length)[: args.max_sentences]
    corpus = args.out / "fortunes.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    base = Config.from_flags(
        model="sentence",
        data=str(corpus),
        max_length=args.max_length,
        max_vocab=args.max_vocab,
        test_fraction=args.test_fraction,
        latent_dim=args.latent_dim,
        rnn_size=args.rnn_size,
        embedding_dim=args.embedding_dim,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        num_eval_samples=args.num_samples,
        num_threads=1,
        seed=args.seed,
        device="cpu",
    )
    table, summary = [], {}
    for label, changes in rows(args).items():
        workdir = args.out / re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        begin = time.perf_counter()
        result = fit(base.replace(**changes), workdir, progress=False)
        seconds = time.perf_counter() - begin
        e = result.evaluation
        summary[label] = {"workdir": str(workdir), "seconds": seconds, **e}
        table.append(
            [
                label,
                f"{e['kl']:.2f}",
                f"{e['active_units']} / {args.latent_dim}",
                f"{e['nll_per_token']:.3f}",
                f"{e['perplexity']:.1f}",
                f"{e['reconstruction_accuracy']:.3f}",
                f"{seconds:.0f}",
            ]
        )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    data = result.data
    lines = [
        f"fortunes: {len(data.train)} train / {len(data.test)} held-out sentences of 3 to "
        f"{args.max_length} tokens, vocabulary {len(data.vocabulary)} (the {args.max_vocab} most "
        f"frequent training words and 4 special tokens); GRU encoder and decoder, embedding "
        f"{args.embedding_dim}, state {args.rnn_size}, z of {args.latent_dim} dimensions, "
        f"{args.epochs} epochs at batch {args.batch_size}, Adam "
        f"{base.optimization['learning_rate']:g}, seed {args.seed}; IWAE with K = "
        f"{args.num_samples}; one thread",
        environment(torch.device("cpu")),
    ]
    report("Posterior collapse on sentences", lines, markdown_table(COLUMNS, table), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
