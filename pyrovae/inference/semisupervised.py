r"""Training pieces of the M2 model: the labelled subset, the combined loss, a baseline.

The objective of Kingma et al. (2014), to be maximised, is

.. math::

    \mathcal{J}^\alpha = \sum_{(x, y) \in \mathcal{D}_l} \mathcal{L}(x, y)
        + \sum_{x \in \mathcal{D}_u} \mathcal{U}(x)
        + \alpha\, E_{\tilde p_l(x, y)}\big[\log q_\phi(y \mid x)\big],

with :math:`\mathcal{L}` the ELBO of a labelled item, :math:`\mathcal{U}` the ELBO of an
unlabelled one with the class summed out, and :math:`\alpha = 0.1\,N` in the paper. One
SVI step takes one unlabelled minibatch (scaled by :math:`N_u / B_u`), one labelled
minibatch (scaled by :math:`N_l / B_l`) and the mean classification log-likelihood of
the labelled minibatch times :math:`\alpha`, and minimises :math:`-\mathcal{J}^\alpha`.
``TraceEnum_ELBO`` sums out the class of the unlabelled items exactly.

References
----------
- Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
  Generative Models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.errors import DataError

__all__ = ["SemiSupervisedLoss", "labeled_subset", "train_classifier"]


def labeled_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` randomly chosen items of every class (sorted), the rest
    being unlabelled; raises :class:`DataError` when a class has too few items."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) <= per_class:
            raise DataError(
                f"class {c} has {len(members)} training items, too few for "
                f"--labels-per-class {per_class} and some unlabelled ones; lower it"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.sort(torch.cat(chosen)).values


class SemiSupervisedLoss(nn.Module):
    r""":math:`-\mathcal{J}^\alpha` of a labelled and an unlabelled minibatch.

    Parameters
    ----------
    unlabeled_elbo : nn.Module
        ``TraceEnum_ELBO(...)(model, guide)``: the negative ELBO with the class summed out.
    labeled_elbo : nn.Module
        ``Trace_ELBO(...)(model, guide)``: the negative ELBO with the class observed (there
        is nothing to enumerate).
    classifier : nn.Module
        The guide's classifier, ``x -> logits`` of :math:`q(y \mid x)`.
    alpha : float, optional
        Weight of the classification term; ``None`` is :math:`0.1\,N` with :math:`N` the
        number of training items, labelled and unlabelled.
    """

    def __init__(
        self,
        unlabeled_elbo: nn.Module,
        labeled_elbo: nn.Module,
        classifier: nn.Module,
        alpha: float | None,
    ) -> None:
        super().__init__()
        self.unlabeled_elbo = unlabeled_elbo
        self.labeled_elbo = labeled_elbo
        self.classifier = classifier
        self.alpha = alpha

    def forward(
        self,
        x: torch.Tensor,
        *,
        x_labeled: torch.Tensor,
        y_labeled: torch.Tensor,
        num_labeled: int,
        num_data: int,
        beta: float = 1.0,
    ) -> torch.Tensor:
        alpha = 0.1 * (num_data + num_labeled) if self.alpha is None else self.alpha
        unlabeled = self.unlabeled_elbo(x, num_data=num_data, beta=beta)
        labeled = self.labeled_elbo(x_labeled, y_labeled, num_data=num_labeled, beta=beta)
        classification = F.cross_entropy(self.classifier(x_labeled), y_labeled)
        return unlabeled + labeled + alpha * classification


def train_classifier(
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """The supervised-only baseline: ``classifier`` trained with cross-entropy and Adam on
    the labelled items alone (``num_steps`` minibatch steps; a training set of a few
    labels is fitted perfectly long before)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
    classifier.train()
    for _ in range(num_steps):
        index = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        index = index.to(x.device)
        loss = F.cross_entropy(classifier(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return classifier.eval()
