"""Write the intersphinx inventories of PyTorch, Pyro and ArviZ without a network.

The docs build links names such as ``torch.Tensor``, ``pyro.distributions.Normal`` or
``arviz.InferenceData`` to those projects' documentation. Intersphinx reads the targets
from each project's ``objects.inv``; the build must not download anything, so this script
writes small inventories from the installed packages instead: every public class and
function of the modules below, at the address the project's published docs give it
(the patterns below). Rerun it after upgrading those packages::

    python docs/make_inventories.py        # writes docs/inventories/{torch,pyro,arviz}.inv
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent / "inventories"


def torch_uri(module: str, name: str, obj: object) -> str:
    full = f"{module}.{name}"
    if module.startswith("torch.distributions"):
        return f"distributions.html#{obj.__module__}.{obj.__qualname__}"
    if module == "torch.utils.data":
        return f"data.html#{full}"
    if full == "torch.Tensor":
        return "tensors.html#torch.Tensor"
    if full in ("torch.device", "torch.dtype"):
        return f"tensor_attributes.html#{full}"
    return f"generated/{full}.html#{full}"


#: Pyro's docs: one page per subpackage
PYRO_PAGES = {
    "pyro": "primitives.html",
    "pyro.distributions": "distributions.html",
    "pyro.distributions.transforms": "distributions.html",
    "pyro.infer": "inference_algos.html",
    "pyro.infer.mcmc": "mcmc.html",
    "pyro.poutine": "poutine.html",
    "pyro.nn": "nn.html",
    "pyro.optim": "optimization.html",
}


def pyro_uri(module: str, name: str, obj: object) -> str:
    if getattr(obj, "__module__", "") == "pyro.distributions.torch":
        # the thin wrappers of torch's distributions: one automodule of pyro.distributions.torch
        return f"distributions.html#pyro.distributions.torch.{name}"
    return f"{PYRO_PAGES[module]}#{module}.{name}"


def arviz_uri(module: str, name: str, obj: object) -> str:
    return f"api/generated/{module}.{name}.html#{module}.{name}"


PROJECTS = {
    "torch": (
        "PyTorch",
        [
            "torch",
            "torch.nn",
            "torch.optim",
            "torch.distributions",
            "torch.distributions.constraints",
            "torch.utils.data",
        ],
        torch_uri,
    ),
    "pyro": ("Pyro", list(PYRO_PAGES), pyro_uri),
    "arviz": ("ArviZ", ["arviz"], arviz_uri),
}


def entries(modules: list[str], uri) -> list[str]:
    lines = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in sorted(dir(module)):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if inspect.isclass(obj):
                role = "py:class"
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                role = "py:function"
            else:
                continue
            full = f"{module_name}.{name}"
            lines.setdefault(full, f"{full} {role} 1 {uri(module_name, name, obj)} -")
            # the name under its defining module too (how autodoc spells base classes)
            canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            if canonical.startswith(module_name.split(".")[0] + ".") and canonical != full:
                lines.setdefault(canonical, f"{canonical} {role} 1 {uri(module_name, name, obj)} -")
    return sorted(lines.values())


def write(key: str) -> Path:
    project, modules, uri = PROJECTS[key]
    version = importlib.import_module(modules[0]).__version__
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version.split('+')[0]}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "\n".join(entries(modules, uri)) + "\n"
    path = OUT / f"{key}.inv"
    path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))
    return path


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for key in PROJECTS:
        path = write(key)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
