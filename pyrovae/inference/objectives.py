r"""Training objectives: Pyro's ELBO estimators, looked up by their Pyro names.

All of them estimate

.. math::

    \mathcal{L}(x) = E_{q(z \mid x)}[\log p(x \mid z)] - \beta\,\mathrm{KL}(q(z \mid x)\,\|\,p(z))

``Trace_ELBO`` uses the Monte Carlo estimate of the KL term, ``TraceMeanField_ELBO``
its closed form where ``torch.distributions.kl_divergence`` knows one (falling back
to Monte Carlo otherwise, e.g. for the mixture prior), and ``JitTrace_ELBO`` is
``Trace_ELBO`` compiled with the PyTorch JIT.

References
----------
- Kingma & Welling (2014), Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pyro
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyrovae.registry import Registry

__all__ = ["ELBOS", "elbo_context", "make_elbo"]

ELBOS: Registry[type[ELBO]] = Registry("ELBO")
ELBOS.register("Trace_ELBO")(Trace_ELBO)
ELBOS.register("TraceMeanField_ELBO")(TraceMeanField_ELBO)
ELBOS.register("JitTrace_ELBO")(JitTrace_ELBO)


def make_elbo(name: str, num_particles: int = 1, vectorize_particles: bool = False) -> ELBO:
    """The ELBO registered as ``name``; our model has one plate, hence ``max_plate_nesting=1``."""
    options = {
        "num_particles": num_particles,
        "vectorize_particles": vectorize_particles,
        "max_plate_nesting": 1,
    }
    if name.startswith("Jit"):
        options["ignore_jit_warnings"] = True
    return ELBOS[name](**options)


@contextlib.contextmanager
def elbo_context(name: str) -> Iterator[None]:
    """The settings an ELBO needs while it trains and evaluates.

    Pyro's JIT (``pyro.ops.jit``) finds parameters through the global param store,
    so JIT ELBOs run with ``module_local_params=False`` and a cleared store; every
    other ELBO uses pyrovae's default of module-local parameters. The JIT's trace
    fixes the minibatch size, which is why training drops a last, smaller batch.
    """
    if not name.startswith("Jit"):
        yield
        return
    with pyro.settings.context(module_local_params=False), warnings.catch_warnings():
        # torch deprecates torch.jit.trace in favour of torch.compile; Pyro still uses it
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*")
        pyro.clear_param_store()
        try:
            yield
        finally:
            pyro.clear_param_store()
