"""Write the intersphinx inventories of PyTorch, Pyro and ArviZ without a network.

The docs build links names such as ``torch.Tensor``, ``pyro.distributions.Normal`` or
``arviz.InferenceData`` to those projects' documentation. Intersphinx reads the targets
from each project's ``objects.inv``; the build must not download anything, so this script
writes small inventories from the installed packages instead: every public class and
function of the modules below, at the address the project's published docs give it
(the patterns below), and the few names of Python, NumPy, pandas and Matplotlib that
our signatures use (listed by hand in :data:`MANUAL`). Rerun it after upgrading those packages::

    python docs/make_inventories.py        # writes docs/inventories/*.inv
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


def group(module: str, role: str, page: str, names: str) -> list[tuple[str, str, str]]:
    """Entries ``module.name`` for the space-separated ``names``, at ``page`` (``{n}``: name)."""
    return [(f"{module}.{n}", role, page.format(n=n)) for n in names.split()]


#: the few names of Python, NumPy, pandas and Matplotlib our signatures and docstrings use:
#: project -> (name, role, page#anchor)
# fmt: off
MANUAL = {
    "python": [
        *group("builtins", "py:class", "library/functions.html#{n}",
               "int str float bool dict tuple list object type slice bytes set frozenset range"),
        *group("builtins", "py:function", "library/functions.html#{n}",
               "callable len print open isinstance"),
        *group("builtins", "py:exception", "library/exceptions.html#{n}",
               "BaseException Exception ValueError TypeError OSError KeyError RuntimeError "
               "ArithmeticError MemoryError KeyboardInterrupt FileNotFoundError "
               "NotImplementedError"),
        *group("collections.abc", "py:class", "library/collections.abc.html#collections.abc.{n}",
               "Sequence Mapping Callable Iterator Iterable Collection MutableMapping Generator"),
        ("builtins.None", "py:data", "library/constants.html#None"),
        # as annotations spell them (``X | None``, ``callable``): class references
        ("builtins.None", "py:class", "library/constants.html#None"),
        ("builtins.callable", "py:class", "library/functions.html#callable"),
        ("os.PathLike", "py:class", "library/os.html#os.PathLike"),
        ("pathlib.Path", "py:class", "library/pathlib.html#pathlib.Path"),
        ("argparse.Namespace", "py:class", "library/argparse.html#argparse.Namespace"),
        ("argparse.ArgumentParser", "py:class", "library/argparse.html#argparse.ArgumentParser"),
        ("typing.Any", "py:data", "library/typing.html#typing.Any"),
        ("logging.Logger", "py:class", "library/logging.html#logging.Logger"),
    ],
    "numpy": [
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
        (
            "numpy.random.Generator",
            "py:class",
            "reference/random/generator.html#numpy.random.Generator",
        ),
        (
            "numpy.random._generator.Generator",
            "py:class",
            "reference/random/generator.html#numpy.random.Generator",
        ),
        ("numpy.memmap", "py:class", "reference/generated/numpy.memmap.html#numpy.memmap"),
        ("numpy.load", "py:function", "reference/generated/numpy.load.html#numpy.load"),
    ],
    "pandas": [
        ("pandas.DataFrame", "py:class", "reference/api/pandas.DataFrame.html#pandas.DataFrame"),
        ("pandas.Series", "py:class", "reference/api/pandas.Series.html#pandas.Series"),
    ],
    "matplotlib": [
        (
            "matplotlib.figure.Figure",
            "py:class",
            "api/_as_gen/matplotlib.figure.Figure.html#matplotlib.figure.Figure",
        ),
    ],
}
# fmt: on

PROJECTS = {
    "torch": (
        "PyTorch",
        [
            "torch",
            "torch.nn",
            "torch.optim",
            "torch.optim.lr_scheduler",
            "torch.func",
            "torch.nn.parallel",
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


#: module entries the walk above does not produce
EXTRA = {
    "torch": [
        ("torch.optim.lr_scheduler", "py:module", "optim.html#how-to-adjust-learning-rate"),
    ],
}


def write(key: str) -> Path:
    if key in MANUAL:
        project, version = key, "-"
        lines = sorted(f"{name} {role} 1 {uri} -" for name, role, uri in MANUAL[key])
    else:
        project, modules, uri = PROJECTS[key]
        version = importlib.import_module(modules[0]).__version__
        extra = [f"{name} {role} 1 {uri} -" for name, role, uri in EXTRA.get(key, [])]
        lines = sorted([*entries(modules, uri), *extra])
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version.split('+')[0]}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "\n".join(lines) + "\n"
    path = OUT / f"{key}.inv"
    path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))
    return path


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for key in [*PROJECTS, *MANUAL]:
        path = write(key)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
