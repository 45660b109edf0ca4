"""Train a pyrovae VAE with Pyro's own SVI machinery, one step at a time, then sample from it.
===========================================================================================

``vae.model`` and ``vae.guide`` are ordinary Pyro programs with the same signature
``(x=None, *, num_data=None, batch_size=None, beta=1.0)``, so everything in ``pyro.infer``
applies to them. This script does by hand what :func:`pyrovae.train` does for you:

1. ``Trace_ELBO()(vae.model, vae.guide)`` is an ``ELBOModule``: calling it on a minibatch
   returns the differentiable loss -ELBO, and its ``parameters()`` (the encoder's, the
   decoder's, the prior's and the likelihood's) go to a plain ``torch.optim`` optimizer;
2. ``pyro.infer.Predictive`` draws posterior predictive samples of held-out images;
3. ``vae.sample(n)`` (or ``Predictive`` with no guide) draws new images from the prior.

Run it with::

    .venv/bin/python examples/svi_by_hand.py                             # about 20 s on 2 CPU cores
    .venv/bin/python examples/svi_by_hand.py --num-epochs 1 --limit 64   # smoke test
    .venv/bin/python examples/svi_by_hand.py --figures figs   # also save the images as PNGs

Why not ``pyro.infer.SVI(model, guide, pyro.optim.Adam(...), loss)``? Importing pyrovae
sets ``pyro.settings.set(module_local_params=True)``: parameters live in the modules, not
in Pyro's global param store, and ``SVI.step`` (which collects parameters from the param
store) fails with ``AttributeError: 'Parameter' object has no attribute 'unconstrained'``.
The ELBOModule + ``torch.optim`` pattern below is the one that works with module-local
parameters (it is the pattern of Pyro's own ``examples/svi_torch.py``). The classic
``SVI`` + ``pyro.optim`` works only inside ``with pyro.settings.context(module_local_params=
False):``, with the parameters in the global param store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO

from pyrovae import VAE, load_dataset, plots

#: characters from light to dark, to print 8x8 images in the terminal
SHADES = " .:-=+*#%@"


def ascii_images(images: torch.Tensor, titles: list[str]) -> str:
    """Render images of shape (n, 1, H, W) with values in [0, 1] side by side as text."""
    images = images.squeeze(1).clamp(0, 1)
    width = images.shape[-1]
    lines = ["  ".join(f"{t[:width]:<{width}}" for t in titles).rstrip()]
    for row in range(images.shape[1]):
        cells = [
            "".join(SHADES[round(float(v) * (len(SHADES) - 1))] for v in image[row])
            for image in images
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--num-epochs", type=int, default=100)
    parser.add_argument("--limit", type=int, help="use only the first N train and test images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=100, help="posterior predictive draws")
    parser.add_argument("--print-every", type=int, default=10, help="epochs between lines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num-threads", type=int, default=1, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--figures", type=Path, help="also save the images as PNGs in this folder")
    args = parser.parse_args(argv)
    if args.num_threads > 0:
        # The networks are tiny: one thread per process is as fast as several, and far
        # faster when the cores are shared (idle threads busy-wait for work).
        torch.set_num_threads(args.num_threads)

    pyro.set_rng_seed(args.seed)
    # Pixels rounded to 0 or 1, so the Bernoulli likelihood is a proper distribution of the
    # data (on grey levels it is only a cross-entropy) and the printed digits look crisp.
    data = load_dataset("digits", binarize="threshold", limit=args.limit, seed=args.seed)
    num_data = len(data.train)
    vae = VAE(data.shape, latent_dim=args.latent_dim)  # N(0, I) prior, Bernoulli pixels

    # -- 1. SVI by hand --------------------------------------------------------------------
    elbo = Trace_ELBO()(vae.model, vae.guide)  # an ELBOModule (a torch.nn.Module)
    optimizer = torch.optim.Adam(elbo.parameters(), lr=args.learning_rate)

    # num_data tells the data plate how many points the minibatch stands for: the plate
    # scales the minibatch's log-likelihood by num_data / len(x), so the loss estimates
    # -ELBO of the whole training set and -loss / num_data is nats per data point.
    history = []
    print("epoch  train ELBO  held-out ELBO  (nats per image)")
    for epoch in range(1, args.num_epochs + 1):
        total, num_batches = 0.0, 0
        for x in data.batches("train", args.batch_size, shuffle=True):
            loss = elbo(x, num_data=num_data)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            num_batches += 1
        train_elbo = -total / (num_batches * num_data)
        # The same ELBOModule, without gradients, on the whole held-out set at once.
        with torch.no_grad():
            test_elbo = -elbo(data.test).item() / len(data.test)
        history.append(test_elbo)
        if epoch % args.print_every == 0 or epoch in (1, args.num_epochs):
            print(f"{epoch:>5}  {train_elbo:>10.2f}  {test_elbo:>13.2f}")

    # -- 2. posterior predictive: x* ~ p(x | z), z ~ q(z | x) --------------------------------
    # Predictive runs the guide on x to draw z, then replays the model with that z. The
    # model *observes* its "x" site when given x, and Predictive would return that
    # observation unchanged; poutine.uncondition turns the observed site back into a
    # sampled one, so "x" holds fresh draws from the likelihood.
    x = data.test[:4]
    predictive = Predictive(
        poutine.uncondition(vae.model),
        guide=vae.guide,
        num_samples=args.num_samples,
        return_sites=["z", "x"],
    )
    with torch.no_grad():
        samples = predictive(x)
    print(f"\nposterior predictive: z {tuple(samples['z'].shape)}, x {tuple(samples['x'].shape)}")
    # The mean of the binary draws estimates E[x* | x]; compare it with the input.
    posterior_mean = samples["x"].mean(0)
    print(f"mean squared error of E[x* | x]: {(posterior_mean - x).pow(2).mean():.4f}")
    print(ascii_images(torch.cat([x, posterior_mean]), ["data"] * 4 + ["E[x*|x]"] * 4))
    if args.figures:
        # held-out digits (top row) above E[x* | x] (bottom row)
        figure = plots.reconstructions(x, posterior_mean, nrow=4)
        save(figure, args.figures / "posterior-predictive.png")

    # -- 3. generation: z ~ p(z), then E[x | z] ----------------------------------------------
    # vae.sample runs the model with x=None; Predictive(vae.model, num_samples=n)(batch_size=m)
    # would give the same kind of draws as a (n, m, ...) tensor of binary images.
    prior_samples = vae.sample(8)
    print(f"\nprior samples {tuple(prior_samples.shape)} (decoded means E[x | z], z ~ p(z)):")
    print(ascii_images(prior_samples, [f"z{i}" for i in range(8)]))
    if args.figures:
        title = "E[x | z], z ~ p(z)"
        save(plots.image_grid(vae.sample(64), title=title), args.figures / "prior-samples.png")
    return history


def save(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
