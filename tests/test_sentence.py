"""The sentence VAE (``--model sentence``) and the text data it reads: its log-likelihood
against a hand computation with ``torch.distributions``, word dropout, the vocabulary, the
held-out NLL per token, and a tiny corpus through Python and the command line."""

from __future__ import annotations

import json
import math
import random

import pyro
import pytest
import torch
from cli_checks import run_cli
from pyro import poutine

from pyrovae import Config, fit
from pyrovae.data import Vocabulary, load_dataset, tokenize
from pyrovae.data.text import BOS, EOS, PAD, UNK
from pyrovae.errors import DataError
from pyrovae.inference.training.checkpoint import load_checkpoint
from pyrovae.variants import VARIANTS, SentenceVAE

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "she", "he"]
VERBS = ["sees", "likes", "finds", "eats", "paints"]
OBJECTS = ["the moon", "a fish", "red apples", "the sea", "it"]
ENDS = [".", "!", "?"]
SMALL = {"latent_dim": 2, "rnn_size": 12, "embedding_dim": 6}


def corpus(count: int = 60, seed: int = 0) -> list[str]:
    """``count`` short sentences of a toy grammar (this test's own text)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        f"{rng.choice(ENDS)}"
        for _ in range(count)
    ]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(corpus()) + "\n\n", encoding="utf-8")
    return path


@torch.no_grad()
def hand_log_likelihood(decoder, z: torch.Tensor, sentence: list[int]) -> tuple[float, int]:
    """log p(sentence | z) by running the decoder's GRU one token at a time on the
    unpadded sentence, each term from ``torch.distributions.Categorical``; also the
    number of tokens whose greedy prediction is right."""
    h = torch.tanh(decoder.initial(z))[None, None]
    previous, total, right = BOS, 0.0, 0
    for token in sentence:
        out, h = decoder.rnn(decoder.embedding(torch.tensor([[previous]])), h)
        logits = decoder.output(out[0, 0]).clone()
        logits[[PAD, BOS]] = -math.inf
        total += torch.distributions.Categorical(logits=logits).log_prob(torch.tensor(token))
        right += int(logits.argmax()) == token
        previous = token
    return float(total), right


def test_a_sentence_scores_its_unpadded_tokens_as_a_hand_computation_does():
    vae = SentenceVAE((7,), vocab_size=11, **SMALL)
    x = torch.tensor(
        [[4, 5, 6, EOS, PAD, PAD, PAD], [7, EOS, PAD, PAD, PAD, PAD, PAD], [4, 8, 9, 10, 5, 6, EOS]]
    )
    z = torch.randn(3, 2)
    trace = poutine.trace(poutine.condition(vae.model, {"z": z})).get_trace(x)
    site = trace.nodes["x"]
    assert site["is_observed"] and site["fn"].event_shape == (7,)
    log_p = site["fn"].log_prob(x).detach()
    for n, row in enumerate(x):
        sentence = row[: int((row != PAD).sum())].tolist()  # the words and <eos>
        expected, _ = hand_log_likelihood(vae.model.decoder, z[n], sentence)
        # float32 sums of at most 7 terms of a few nats: 1e-5 is ~100 ulps
        assert float(log_p[n]) == pytest.approx(expected, abs=1e-5)
    # <pad> has probability 0 (a -inf logit): a finite log p shows the padding is masked out
    # (adds exactly 0), not scored
    assert torch.isfinite(log_p).all()
    # one site for the whole sentence, inside the data plate
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]


def test_the_site_broadcasts_over_particles_as_the_iwae_needs():
    vae = SentenceVAE((5,), vocab_size=9, **SMALL)
    x = torch.tensor([[4, 5, EOS, PAD, PAD], [6, 7, 8, EOS, PAD]])
    z = torch.randn(3, 2, 2)  # (particles, sentences, latent_dim)
    with pyro.plate("particles", 3, dim=-2):
        trace = poutine.trace(poutine.condition(vae.model, {"z": z})).get_trace(x)
    log_p = trace.nodes["x"]["fn"].log_prob(x).detach()
    assert log_p.shape == (3, 2)
    for k in range(3):
        expected, _ = hand_log_likelihood(vae.model.decoder, z[k, 1], [6, 7, 8, EOS])
        assert float(log_p[k, 1]) == pytest.approx(expected, abs=1e-5)


def test_word_dropout_replaces_words_only_in_training_at_its_rate():
    rate = 0.3
    vae = SentenceVAE((9,), vocab_size=30, word_dropout=rate, **SMALL)
    decoder = vae.model.decoder
    x = torch.randint(4, 30, (400, 9))
    x[:, 6] = EOS
    x[:, 7:] = PAD
    seen = []
    hook = decoder.embedding.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    z = torch.randn(400, 2)
    decoder.train()
    decoder(z, x)
    decoder.eval()
    first = decoder(z, x)
    second = decoder(z, x)
    hook.remove()
    trained, evaluated = seen[0], seen[1]
    teacher = torch.cat([torch.full((400, 1), BOS), x[:, :-1]], dim=1)
    words = teacher >= 4
    assert torch.equal(trained[~words], teacher[~words])  # <bos>, <eos>, <pad> never dropped
    dropped = trained[words] == UNK
    assert torch.equal(trained[words][~dropped], teacher[words][~dropped])
    n = int(words.sum())  # 400 sentences x 6 words read
    standard_error = math.sqrt(rate * (1 - rate) / n)
    assert abs(float(dropped.float().mean()) - rate) < 4 * standard_error
    assert torch.equal(evaluated, teacher) and torch.equal(first, second)  # eval: no dropout


def test_the_vocabulary_round_trips_and_maps_unknown_words_to_unk(tmp_path):
    sentences = [tokenize(s) for s in ["The cat sat.", "the dog sat!", "A cat, a cat."]]
    vocab = Vocabulary.build(sentences, min_count=2)
    # cat 3 times; ".", a, sat, the twice (ties alphabetical); dog, "!", "," once
    assert vocab.tokens == ("<pad>", "<unk>", "<bos>", "<eos>", "cat", ".", "a", "sat", "the")
    assert Vocabulary.build(sentences, max_vocab=2).tokens[4:] == ("cat", ".")
    vocab.save(tmp_path / "vocabulary.json")
    assert Vocabulary.load(tmp_path / "vocabulary.json") == vocab
    assert json.loads((tmp_path / "vocabulary.json").read_text())["tokens"][:4] == [
        "<pad>",
        "<unk>",
        "<bos>",
        "<eos>",
    ]
    row = vocab.tensor(["The zebra sat."], max_length=5)[0]
    assert row.tolist() == [8, UNK, 7, 5, EOS, PAD]
    assert vocab.decode(row) == "the <unk> sat ."
    assert tokenize("Don't panic -- it's 42!") == ["don't", "panic", "-", "-", "it's", "42", "!"]
    (tmp_path / "bad.json").write_text('{"format": "pyrovae-vocabulary", "tokens": ["a"]}')
    with pytest.raises(DataError, match="starts with <pad>"):
        Vocabulary.load(tmp_path / "bad.json")


def test_a_text_file_becomes_padded_token_ids_with_a_training_vocabulary(text_file):
    long = "one two three four five six seven eight nine ten"
    text_file.write_text(text_file.read_text() + long + "\n")
    data = load_dataset(path=text_file, max_length=7, seed=0)  # the grammar's longest: 7
    assert data.shape == (8,) and data.train.dtype == torch.int64
    assert len(data.train) + len(data.test) == 60  # the long sentence and blank lines dropped
    train_words = {data.vocabulary.tokens[i] for i in data.train.unique().tolist()}
    assert set(data.vocabulary.tokens[4:]) <= train_words  # built from the training split
    assert "ten" not in data.vocabulary.tokens
    expected = [" ".join(tokenize(s)) for s in corpus()]
    decoded = [data.vocabulary.decode(row) for row in torch.cat([data.train, data.test])]
    assert sorted(decoded) == sorted(expected)  # every word of the corpus is a training word


def test_nll_per_token_and_perplexity_agree_with_a_hand_computation(monkeypatch):
    """With a decoder that ignores z (zero initial-state layer) and a guide equal to the
    prior (zero encoder head), every importance weight is exactly p(x), so the IWAE bound
    is log p(x) itself, the KL 0 and no unit active."""
    vae = SentenceVAE((6,), vocab_size=10, **SMALL)
    with torch.no_grad():
        for layer in (vae.model.decoder.initial, vae.guide.encoder.head):
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.tensor([[4, 5, 6, EOS, PAD, PAD], [7, EOS, PAD, PAD, PAD, PAD], [8, 9, 4, 5, 6, EOS]])
    result = vae.evaluate_heldout(x, num_samples=7, batch_size=2)
    log_px, right = zip(
        *(hand_log_likelihood(vae.model.decoder, torch.zeros(2), r[r != PAD].tolist()) for r in x)
    )
    tokens = 4 + 2 + 6
    nll_per_token = -sum(log_px) / tokens
    assert result["num_tokens"] == tokens
    assert result["log_likelihood"] == pytest.approx(sum(log_px) / 3, abs=1e-5)
    assert result["elbo"] == pytest.approx(sum(log_px) / 3, abs=1e-5)
    assert result["nll_per_token"] == pytest.approx(nll_per_token, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll_per_token), rel=1e-5)
    assert result["reconstruction_accuracy"] == pytest.approx(sum(right) / tokens)
    assert result["kl"] == 0.0 and result["active_units"] == 0
    # a pass holds at most CHUNK_ELEMENTS logits: with room for one sentence and one draw
    # (6 positions x 10 tokens) the same numbers come out of 7 x 3 passes
    monkeypatch.setattr("pyrovae.inference.evaluation.CHUNK_ELEMENTS", 60)
    chunked = vae.evaluate_heldout(x, num_samples=7, batch_size=2)
    assert chunked == pytest.approx(result, abs=1e-5)


def test_the_iwae_bound_weighs_the_draws_and_the_elbo_does_not():
    """A guide unlike the prior (q = N(0.3, e^0.5) per dim, wider than p, so the weights
    p(z)/q(z) are bounded) and a decoder that ignores z: then log w_k = log p(x) +
    log p(z_k) - log q(z_k), the ELBO is log p(x) - KL(q || p) (closed form, 0.23 nats per
    sentence here) and the IWAE bound tends to log p(x). A bound that averaged the log
    weights instead of the weights would land on the ELBO and fail here.

    Tolerances: the ELBO's Monte Carlo standard error with K = 4000 draws per sentence is
    sd(log p - log q) / sqrt(3K) < 0.01 nats; the IWAE bias is about Var(w) / (2K) < 1e-3
    (Var(w) < 1 for these two Gaussians), plus its own Monte Carlo error of the same
    order."""
    torch.manual_seed(0)
    vae = SentenceVAE((6,), vocab_size=10, **SMALL)
    loc, log_var = 0.3, 0.5
    with torch.no_grad():
        vae.model.decoder.initial.weight.zero_()
        vae.model.decoder.initial.bias.zero_()
        vae.guide.encoder.head.weight.zero_()
        vae.guide.encoder.head.bias.copy_(torch.tensor([loc, loc, log_var, log_var]))
    x = torch.tensor([[4, 5, 6, EOS, PAD, PAD], [7, EOS, PAD, PAD, PAD, PAD], [8, 9, 4, 5, 6, EOS]])
    result = vae.evaluate_heldout(x, num_samples=4000, batch_size=3)
    log_px = sum(
        hand_log_likelihood(vae.model.decoder, torch.zeros(2), r[r != PAD].tolist())[0]
        for r in x
    ) / 3
    q = torch.distributions.Normal(loc, math.exp(log_var / 2))
    kl = 2 * torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).item()
    assert kl > 0.2
    assert result["elbo"] == pytest.approx(log_px - kl, abs=0.03)
    assert result["log_likelihood"] == pytest.approx(log_px, abs=0.01)
    assert result["kl"] == pytest.approx(kl, abs=0.03)


def _rows(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_a_tiny_corpus_trains_and_resumes_exactly(text_file, tmp_path):
    flags = {"model": "sentence", "data": str(text_file), "max_length": 6, **SMALL}
    flags.update(word_dropout=0.25, batch_size=16, num_eval_samples=3, kl_schedule="linear")
    whole = fit(Config.from_flags(num_epochs=2, **flags), tmp_path / "whole", progress=False)
    fit(Config.from_flags(num_epochs=1, **flags), tmp_path / "cut", progress=False)
    resumed = fit(
        Config.from_flags(num_epochs=2, **flags), tmp_path / "cut", resume=True, progress=False
    )
    assert _rows(resumed.history) == _rows(whole.history)
    assert resumed.evaluation == whole.evaluation
    a, b = whole.vae.state_dict(), resumed.vae.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    folder = tmp_path / "whole"
    assert Vocabulary.load(folder / "vocabulary.json") == whole.data.vocabulary
    state = load_checkpoint(folder / "checkpoint.pt")
    assert state["config"]["data"]["vocabulary"] == str((folder / "vocabulary.json").resolve())
    assert state["config"]["model"]["variant"]["vocab_size"] == len(whole.data.vocabulary)
    evaluation = whole.evaluation
    assert evaluation["perplexity"] == pytest.approx(math.exp(evaluation["nll_per_token"]))
    assert evaluation["log_likelihood"] * evaluation["num_data"] == pytest.approx(
        -evaluation["nll_per_token"] * evaluation["num_tokens"]
    )
    assert not (folder / "samples.png").exists()  # no image grids of sentences


def test_the_command_line_trains_samples_evaluates_and_interpolates(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    sizes = ["--latent-dim", 2, "--rnn-size", 12, "--embedding-dim", 6, "--max-length", 6]
    train = ["train", "--model", "sentence", "--data", text_file, "--workdir", run, *sizes]
    code, out, err = run_cli([*train, "--num-epochs", 1, "--num-eval-samples", 2], capsys)
    assert code == 0, err
    code, out, err = run_cli(["sample", run, "-n", 4], capsys)
    assert code == 0, err
    lines = (run / "samples-n4.txt").read_text().splitlines()
    assert lines[0].startswith("# sampled") and lines[6].startswith("# greedy")
    assert len(lines) == 11 and lines[1] in out
    code, out, err = run_cli(["evaluate", run, "-k", 3], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["perplexity"] == pytest.approx(math.exp(result["nll_per_token"]))
    assert {"kl", "active_units", "reconstruction_accuracy"} <= set(result)
    code, out, err = run_cli(
        ["interpolate", run, "The cat sees the moon.", "A zebra eats it!", "--steps", 3], capsys
    )
    assert code == 0, err
    assert "> a <unk> eats it !" in out
    assert len((run / "interpolation.txt").read_text().splitlines()) == 3 + 3
    code, out, err = run_cli(["interpolate", run, "--items", 0, 1, "--steps", 2], capsys)
    assert code == 0, err
    moved = tmp_path / "moved"
    run.rename(moved)  # the run reads the vocabulary.json of its folder, wherever it is
    code, out, err = run_cli(["sample", moved, "-n", 2], capsys)
    assert code == 0, err
    # and resumes on it (the config's absolute path names the old folder, now gone)
    resumed = ["train", "--resume", "--workdir", moved, "--num-epochs", 2]
    code, out, err = run_cli([*resumed, "--num-eval-samples", 2], capsys)
    assert code == 0, err
    assert len((moved / "metrics.jsonl").read_text().splitlines()) == 2


def test_bad_input_is_refused_with_one_message(text_file, tmp_path, capsys):
    def refused(argv, match):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and match in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    train = ["train", "--model", "sentence", "--num-epochs", 1]
    refused([*train, "--data", empty, "--workdir", tmp_path / "a"], "holds no sentence")
    refused(
        [*train, "--data", text_file, "--max-length", 2, "--workdir", tmp_path / "b"],
        "at most 2 tokens",
    )
    refused([*train, "--workdir", tmp_path / "c"], "trains on sentences")  # digits
    refused(["train", "--data", text_file, "--workdir", tmp_path / "d"], "holds sentences")
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing left behind
    run = tmp_path / "run"
    sizes = ["--latent-dim", 2, "--rnn-size", 8, "--embedding-dim", 4, "--max-length", 6]
    code, _, err = run_cli([*train, "--data", text_file, "--workdir", run, *sizes], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    images = (["traverse", run], ["inpaint", run], ["score", run], ["inspect", run])
    for command in (*images, ["anomaly", run]):
        refused(command, "its items are sentences (token ids), not images")
    refused(["interpolate", run, "only one sentence"], "two sentences")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_the_variant_is_registered_with_its_options():
    assert VARIANTS["sentence"] is SentenceVAE
    options = VARIANTS.options("sentence")
    assert {"word_dropout", "cell", "bidirectional", "rnn_size", "embedding_dim"} <= set(options)
    lstm = SentenceVAE((6,), vocab_size=10, cell="lstm", bidirectional=True, **SMALL)
    sentences = lstm.sample(5)
    assert sentences.shape == (5, 6) and bool((sentences == EOS).any(-1).all())
    assert lstm.decode(torch.zeros(2, 2)).shape == (2, 6)
