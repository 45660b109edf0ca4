r"""The sentence VAE (Bowman et al. 2016): a latent code :math:`z` for a whole sentence, decoded
word by word by a recurrent network.

.. math::

    z \sim p(z), \qquad
    p_\theta(x \mid z) = \prod_{t=1}^{T} \mathrm{Categorical}\big(x_t \,\big|\,
        \mathrm{softmax}(W h_t + b)\big), \qquad
    h_t = \mathrm{RNN}(h_{t-1}, e(x_{t-1})), \quad h_0 = \tanh(A z + c)

over the :math:`T` tokens of the sentence (its words and the final ``<eos>``; :math:`x_0`
is ``<bos>``): the code sets the recurrent network's initial state, as in the paper, and
the network reads the previous token at every step. A sentence is one sample site ``x`` (a
:class:`SentenceDistribution` with ``event_shape == (max_length + 1,)``): its log-density
is :math:`\sum_t \log p(x_t \mid x_{<t}, z)` over the sentence's positions, the padding
after ``<eos>`` masked out (``Categorical(logits).mask(valid).to_event(1)``), and drawing
from it runs the network on its own draws (ancestral sampling) up to ``<eos>``. ``<pad>``
and ``<bos>`` are never a next token, so their probability is 0.

The guide :math:`q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x), \operatorname{diag}
\sigma^2_\phi(x))` reads the sentence with a recurrent encoder (GRU or LSTM, optionally
bidirectional) whose last state gives the mean and the log-variance.

**Posterior collapse** is this model's native failure: the decoder can model the sentence
from its own prefix, so the ELBO is maximised early by :math:`q(z \mid x) = p(z)` and a
decoder that ignores :math:`z`. Its remedies need no code here: KL annealing
(``--kl-schedule``), free bits (``--elbo FreeBits_ELBO``) and IWAE training are the
objectives of :mod:`pyrovae.inference.training`; **word dropout** (``word_dropout``) is
the model's own: in training, each word the decoder reads (not ``<bos>``) is replaced by
``<unk>`` with that probability, so the decoder must lean on :math:`z` for what it cannot
see. Evaluation never drops words.

References
----------
- Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio (2016), Generating Sentences from a
  Continuous Space.
- Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), Improved Variational
  Inference with Inverse Autoregressive Flow (free bits).
- Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders (active units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pyrovae.data.text import BOS, EOS, PAD, UNK, validate_tokens
from pyrovae.errors import ConfigError, DataError
from pyrovae.guides import AmortizedNormalGuide
from pyrovae.model import make_prior
from pyrovae.model.base import kl_weight
from pyrovae.model.priors import Prior
from pyrovae.variants.vae import VAE, VAEModel

__all__ = [
    "CELLS",
    "SentenceDecoder",
    "SentenceDistribution",
    "SentenceEncoder",
    "SentenceModel",
    "SentenceVAE",
]

#: ``cell``: the recurrent networks of encoder and decoder
CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}

_DEFAULT_HIDDEN = (256, 128)  # VAE's default ``hidden``, which this variant does not read


def _rnn(cell: str, input_size: int, hidden_size: int, bidirectional: bool = False) -> nn.RNNBase:
    if cell not in CELLS:
        raise ConfigError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, batch_first=True, bidirectional=bidirectional)


class SentenceDecoder(nn.Module):
    r"""The network of :math:`p(x_t \mid x_{<t}, z)`: a token embedding, a recurrent network
    whose initial state is :math:`\tanh(A z + c)` (for an LSTM, its hidden and cell
    states both), and a linear layer to the logits of the next token.

    Parameters
    ----------
    vocab_size, latent_dim, embedding_dim, rnn_size : int
        Tokens, code, embedding and recurrent state sizes.
    cell : {"gru", "lstm"}
        The recurrent network.
    word_dropout : float
        In training mode, the probability that a word the decoder reads is replaced by
        ``<unk>`` (Bowman et al.'s word dropout); never in eval mode.
    """

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int,
        embedding_dim: int,
        rnn_size: int,
        cell: str = "gru",
        word_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= word_dropout < 1.0:
            raise ConfigError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = word_dropout
        self.num_states = 2 if cell == "lstm" else 1
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.rnn = _rnn(cell, embedding_dim, rnn_size)
        self.initial = nn.Linear(latent_dim, rnn_size * self.num_states)
        self.output = nn.Linear(rnn_size, vocab_size)
        never = torch.zeros(vocab_size, dtype=torch.bool)
        never[[PAD, BOS]] = True  # never a next token
        self.register_buffer("never", never, persistent=False)

    def initial_state(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The recurrent state before ``<bos>``: ``(1, n, rnn_size)`` per state."""
        states = torch.tanh(self.initial(z)).chunk(self.num_states, -1)
        states = tuple(s.unsqueeze(0).contiguous() for s in states)
        return states if self.num_states > 1 else states[0]

    def step_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the next token from the recurrent outputs (``<pad>``, ``<bos>``: -inf)."""
        return self.output(hidden).masked_fill(self.never, float("-inf"))

    def drop_words(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` with each word (not ``<bos>``, ``<eos>`` or ``<pad>``) replaced by
        ``<unk>`` with probability ``word_dropout``."""
        words = (inputs != BOS) & (inputs != EOS) & (inputs != PAD)
        dropped = words & (torch.rand(inputs.shape, device=inputs.device) < self.word_dropout)
        return inputs.masked_fill(dropped, UNK)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the logits of every position of ``x`` given the true prefix,
        shape ``(*batch, T, vocab_size)`` for ``z`` of shape ``(*batch, D)`` and ``x`` of
        shape ``(*batch, T)`` (their batch shapes broadcast)."""
        batch = torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
        length = x.shape[-1]
        z = z.expand(*batch, z.shape[-1]).reshape(-1, z.shape[-1])
        x = x.expand(*batch, length).reshape(-1, length)
        inputs = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], dim=1)
        if self.training and self.word_dropout > 0:
            inputs = self.drop_words(inputs)
        hidden, _ = self.rnn(self.embedding(inputs), self.initial_state(z))
        return self.step_logits(hidden).reshape(*batch, length, -1)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, length: int, greedy: bool = False) -> torch.Tensor:
        """Sentences decoded from ``z`` (``(*batch, D)``) one token at a time: drawn from
        :math:`p(x_t \\mid x_{<t}, z)` (ancestral sampling), or its most probable token
        (``greedy``); ``(*batch, length)`` token ids, padded after ``<eos>``. A sentence
        still running at the last position ends there with ``<eos>``."""
        batch = z.shape[:-1]
        z = z.reshape(-1, z.shape[-1])
        state = self.initial_state(z)
        token = torch.full((len(z),), BOS, dtype=torch.int64, device=z.device)
        out = torch.full((len(z), length), PAD, dtype=torch.int64, device=z.device)
        done = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        for t in range(length):
            hidden, state = self.rnn(self.embedding(token)[:, None], state)
            logits = self.step_logits(hidden[:, 0])
            if t == length - 1:
                token = torch.full_like(token, EOS)
            elif greedy:
                token = logits.argmax(-1)
            else:
                token = dist.Categorical(logits=logits).sample()
            out[:, t] = token.masked_fill(done, PAD)
            done = done | (token == EOS)
            if bool(done.all()):
                break
        return out.reshape(*batch, length)


class SentenceDistribution(TorchDistribution):
    r""":math:`p_\theta(x \mid z)` of whole sentences: one event of ``length`` positions per
    code.

    ``log_prob(x)`` is :math:`\sum_{t:\, x_t \ne \mathrm{pad}} \log p(x_t \mid x_{<t}, z)`,
    computed as ``Categorical(logits).mask(x != <pad>).to_event(1)`` on the teacher-forced
    logits (so the padding adds exactly 0); ``sample()`` decodes by ancestral sampling
    (:meth:`SentenceDecoder.generate`).

    Parameters
    ----------
    decoder : SentenceDecoder
        The network.
    z : torch.Tensor
        Codes ``(*batch_shape, D)``.
    length : int
        Positions of a sentence (``max_length + 1``).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(
        self,
        decoder: SentenceDecoder,
        z: torch.Tensor,
        length: int,
        validate_args: bool | None = None,
    ) -> None:
        self.decoder, self.z, self.length = decoder, z, length
        super().__init__(z.shape[:-1], torch.Size((length,)), validate_args=False)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> SentenceDistribution:
        z = self.z.expand(*batch_shape, self.z.shape[-1])
        return SentenceDistribution(self.decoder, z, self.length)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.z, value)
        value = value.expand(logits.shape[:-1])
        per_token = dist.Categorical(logits=logits).mask(value != PAD).to_event(1)
        return per_token.log_prob(value)

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        z = self.z.expand(*sample_shape, *self.z.shape)
        return self.decoder.generate(z, self.length)


class SentenceModel(VAEModel):
    r"""The model ``z -> sentence``: a prior and a :class:`SentenceDecoder`.

    ``forward`` shares the signature of :class:`~pyrovae.variants.vae.VAEModel` (without
    ``mask``) and returns the code ``z``. It has no elementwise likelihood
    (``likelihood`` is ``None``): the site ``x`` is a :class:`SentenceDistribution`.

    Parameters
    ----------
    prior : Prior
        :math:`p(z)`.
    decoder : SentenceDecoder
        The recurrent decoder.
    length : int
        Positions of a sentence (``max_length + 1``).
    """

    def __init__(self, prior: Prior, decoder: SentenceDecoder, length: int) -> None:
        super().__init__(prior, decoder, None, (length,))  # type: ignore[arg-type]
        self.length = length

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        batch_size: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """Run the generative story; with ``x=None`` draw ``batch_size`` new sentences."""
        with self.plate(x, num_data, batch_size):
            with kl_weight(beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", SentenceDistribution(self.decoder, z, self.length), obs=x)
        return z


class SentenceEncoder(nn.Module):
    r"""``sentence -> (loc, log_var)`` of the guide :math:`q_\phi(z \mid x)` (an
    :class:`~pyrovae.guides.AmortizedNormalGuide` on this network): a token embedding, a
    recurrent network over the sentence's tokens (its padding left out with
    ``pack_padded_sequence``) and a linear layer from its last state (both directions'
    when ``bidirectional``)."""

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int,
        embedding_dim: int,
        rnn_size: int,
        cell: str = "gru",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.rnn = _rnn(cell, embedding_dim, rnn_size, bidirectional)
        directions = 2 if bidirectional else 1
        self.head = nn.Linear(rnn_size * directions, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = (x != PAD).sum(-1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.embedding(x), lengths, batch_first=True, enforce_sorted=False
        )
        _, state = self.rnn(packed)
        last = state[0] if isinstance(state, tuple) else state  # (directions, n, rnn_size)
        loc, log_var = self.head(torch.cat(list(last), dim=-1)).chunk(2, dim=-1)
        return loc, log_var


class SentenceVAE(VAE):
    r"""The sentence VAE as a variant (``--model sentence``): the model and guide of the
    module docstring, on the token ids of :mod:`pyrovae.data.text` (``--data FILE.txt``).

    The ``prior`` is any registered prior over :math:`z` (the ``vamp`` prior, whose
    pseudo-inputs live in data space, is refused: sentences are discrete). The networks
    are the variant's own (``--embedding-dim``, ``--rnn-size``, ``--cell``,
    ``--bidirectional``); ``encoder``, ``decoder``, ``likelihood`` and ``hidden`` must
    stay at their defaults. The guide takes the ``normal`` guide's
    ``log_var_min``/``log_var_max``. ``event_shape`` is ``(max_length + 1,)``.

    Parameters
    ----------
    vocab_size : int, optional
        sentence: tokens in the vocabulary, its 4 special ones included (set from the data).
    embedding_dim : int
        sentence: size of the token embeddings of encoder and decoder.
    rnn_size : int
        sentence: size of the recurrent state of encoder and decoder.
    cell : str
        sentence: the recurrent network of encoder and decoder, gru or lstm.
    bidirectional : bool
        sentence: read the sentence in both directions in the encoder.
    word_dropout : float
        sentence: in training, replace each word the decoder reads by <unk> with this
        probability (Bowman et al.'s word dropout).

    Examples
    --------
    >>> vae = SentenceVAE((6,), latent_dim=4, vocab_size=12, rnn_size=16, embedding_dim=8)
    >>> vae.sample(3).shape
    torch.Size([3, 6])
    """

    name = "sentence"
    reads_text = True
    own_guide = "q(z|x), the normal guide on a recurrent encoder"
    own_guide_options = ("log_var_min", "log_var_max")
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {"cell": tuple(CELLS)}
    cannot: ClassVar[Mapping[str, str]] = {
        "images": "its items are sentences (token ids), not images",
        "inpainting": (
            "conditioning on some tokens of a sentence is not implemented (its likelihood "
            "is one autoregressive site per sentence)"
        ),
        "compile": "--compile has not been made to trace its recurrent networks",
        "distributed": (
            "data-parallel training has not been exercised with it; train it in one process "
            "(without torchrun)"
        ),
    }

    def __init__(
        self,
        event_shape: Sequence[int],
        *args: Any,
        vocab_size: int | None = None,
        embedding_dim: int = 64,
        rnn_size: int = 128,
        cell: str = "gru",
        bidirectional: bool = False,
        word_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if vocab_size is None or vocab_size <= len((PAD, UNK, BOS, EOS)):
            raise ConfigError(
                f"vocab_size must count the vocabulary's tokens, its 4 special ones and at "
                f"least one word, got {vocab_size} (a run sets it from its data)"
            )
        if min(embedding_dim, rnn_size) < 1:
            raise ConfigError(
                f"embedding_dim and rnn_size must be >= 1, got {embedding_dim} and {rnn_size}"
            )
        if cell not in CELLS:
            raise ConfigError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        if not 0.0 <= word_dropout < 1.0:
            raise ConfigError(f"word_dropout must be in [0, 1), got {word_dropout}")
        if len(event_shape) != 1 or event_shape[0] < 2:
            raise ConfigError(
                f"--model sentence reads sentences of shape (max_length + 1,), got {event_shape}"
            )
        options = {
            "vocab_size": vocab_size,
            "embedding_dim": embedding_dim,
            "rnn_size": rnn_size,
            "cell": cell,
            "bidirectional": bidirectional,
            "word_dropout": word_dropout,
        }
        for name, value in options.items():
            setattr(self, name, value)
        super().__init__(event_shape, *args, **kwargs)
        self.spec["variant"].update(options)

    def build(self, parts: dict[str, tuple[Any, dict[str, Any]]]) -> None:
        """The recurrent encoder and guide, the prior and the recurrent decoder."""
        for role, default, instead in (
            ("encoder", "mlp", "its encoder is recurrent (--rnn-size, --cell)"),
            ("decoder", "mlp", "its decoder is recurrent (--rnn-size, --cell)"),
            ("likelihood", "bernoulli", "its likelihood is the decoder's over the vocabulary"),
        ):
            chosen = parts[role][0]
            if chosen != default:
                shown = chosen if isinstance(chosen, str) else f"a custom {type(chosen).__name__}"
                raise ConfigError(f"--model sentence takes no --{role} ({instead}); drop {shown}")
        if self.hidden != _DEFAULT_HIDDEN:
            raise ConfigError(
                "--model sentence sizes its networks with --rnn-size and --embedding-dim; "
                "drop --hidden"
            )
        if parts["prior"][0] == "vamp":
            raise ConfigError(
                "--model sentence cannot use --prior vamp: its pseudo-inputs are continuous "
                "points in data space, and sentences are discrete; use another prior"
            )
        size = (self.vocab_size, self.latent_dim, self.embedding_dim, self.rnn_size, self.cell)
        encoder = SentenceEncoder(*size, bidirectional=self.bidirectional)
        self.guide = AmortizedNormalGuide(encoder, **parts["guide"][1])
        prior_name, prior_options = parts["prior"]
        prior = make_prior(prior_name, self.latent_dim, prior_options, event_shape=self.event_shape)
        decoder = SentenceDecoder(*size, word_dropout=self.word_dropout)
        self.model = SentenceModel(prior, decoder, self.event_shape[0])

    def validate_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`~pyrovae.errors.DataError` unless ``x`` holds padded sentences of
        this model's vocabulary and length."""
        validate_tokens(x, self.vocab_size, what)
        if tuple(x.shape[1:]) != self.event_shape:
            raise DataError(
                f"{what} have {x.shape[1]} positions; this model reads {self.event_shape[0]} "
                f"(sentences of at most {self.event_shape[0] - 1} tokens, then <eos>)"
            )

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The greedy sentence of each code: the most probable token at every step."""
        return self.model.decoder.generate(z, self.event_shape[0], greedy=True)

    @torch.no_grad()
    def sample(self, num_samples: int, *, return_latents: bool = False) -> torch.Tensor | tuple:
        """Sentences drawn from the model: :math:`z \\sim p(z)`, then ancestral sampling;
        ``(num_samples, max_length + 1)`` token ids (and ``z`` if ``return_latents``)."""
        trace = pyro.poutine.trace(self.model).get_trace(batch_size=num_samples)
        x, z = trace.nodes["x"]["value"], trace.nodes["z"]["value"]
        return (x, z) if return_latents else x

    @torch.no_grad()
    def token_accuracy(self, x: torch.Tensor) -> tuple[int, int]:
        """``(correct, tokens)``: how many of the sentences' tokens (``<eos>`` included) are
        the decoder's most probable next token under teacher forcing at the posterior mean
        :math:`z = \\mu_\\phi(x)`, and how many tokens there are."""
        loc, _ = self.encode(x)
        logits = self.model.decoder(loc, x)
        valid = x != PAD
        return int(((logits.argmax(-1) == x) & valid).sum()), int(valid.sum())

    def evaluate_heldout(
        self,
        x: torch.Tensor,
        *,
        num_samples: int = 1000,
        batch_size: int = 500,
        y: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        r"""The held-out summary in nats, per sentence and per token.

        With :math:`K` = ``num_samples`` draws :math:`z_k \sim q(z \mid x_n)` and
        :math:`T_n` tokens in sentence :math:`n` (words and ``<eos>``),

        .. math::

            \mathrm{NLL/token} = -\frac{\sum_n \log \frac{1}{K} \sum_k
                \frac{p(x_n, z_k)}{q(z_k \mid x_n)}}{\sum_n T_n}, \qquad
            \mathrm{perplexity} = \exp(\mathrm{NLL/token}),

        an upper bound (the IWAE bound) on the model's NLL. Also ``elbo`` and
        ``log_likelihood`` per sentence, ``kl`` (the mean over items and draws of
        :math:`\log q(z_k \mid x_n) - \log p(z_k)`, an unbiased estimate of
        :math:`\mathrm{KL}(q \,\|\, p)` for any prior), ``active_units`` (Burda et al.'s,
        on all of ``x``) and ``reconstruction_accuracy`` (:meth:`token_accuracy`). One pass
        holds at most :data:`~pyrovae.inference.evaluation.CHUNK_ELEMENTS` logits (sentences
        x draws x positions x vocabulary), fewer sentences or draws per pass than asked when
        needed.
        """
        from pyrovae.inference import active_units
        from pyrovae.inference.evaluation import (
            CHUNK_ELEMENTS,
            batches,
            eval_mode,
            importance_weights,
            log_mean_exp,
        )

        # the decoder's logits hold vocab_size values per token: bound sentences x draws
        # so that one pass holds at most CHUNK_ELEMENTS of them
        per_draw = self.event_shape[0] * self.vocab_size
        batch_size = max(1, min(batch_size, CHUNK_ELEMENTS // per_draw))
        draws = max(1, CHUNK_ELEMENTS // (per_draw * batch_size))
        elbos, log_px, kls = [], [], []
        correct = tokens = 0
        with eval_mode(self):
            for xb, _ in batches(x, batch_size, desc=f"IWAE log p(x), K={num_samples}"):
                parts = [
                    importance_weights(self, xb, min(draws, num_samples - start))
                    for start in range(0, num_samples, draws)
                ]
                log_w = torch.cat([w.log_weight for w in parts])
                elbos.append(log_w.mean(0))
                log_px.append(log_mean_exp(log_w))
                kls.append(-torch.cat([w.log_ratio for w in parts]).mean(0))
                right, count = self.token_accuracy(xb)
                correct, tokens = correct + right, tokens + count
            units = active_units(self, x, batch_size=batch_size)[0] if len(x) > 1 else 0
        log_px_sum = torch.cat(log_px).sum().item()
        nll_per_token = -log_px_sum / tokens
        return {
            "num_data": len(x),
            "num_samples": num_samples,
            "num_tokens": tokens,
            "elbo": torch.cat(elbos).mean().item(),
            "log_likelihood": log_px_sum / len(x),
            "nll_per_token": nll_per_token,
            "perplexity": math.exp(nll_per_token),
            "kl": torch.cat(kls).mean().item(),
            "active_units": units,
            "reconstruction_accuracy": correct / tokens,
        }
