"""Sphinx directives that generate pyrovae's reference pages from the code itself.

``.. pyrovae-module:: NAME``
    The API reference of one public module: its docstring, every name of its
    ``__all__`` that it defines (by :mod:`sphinx.ext.autodoc`), and links to the names it
    re-exports from the modules that document them (which module documents a name is
    :func:`pyrovae_reference.home`; what an entry shows is
    :func:`pyrovae_reference.documented_names`, which ``tests/test_docs.py`` checks
    against ``__all__`` without a build).

``.. pyrovae-cli::``
    The command-line reference: ``pyrovae --help`` and every subcommand's ``--help``,
    rendered from the parser that ``pyrovae`` itself runs (:func:`pyrovae_reference.cli_help`).
"""

from __future__ import annotations

import builtins
import re

from docutils import nodes
from pyrovae_reference import (
    canonical,
    cli_help,
    documented_names,
    module_rst,
    public_modules,
)
from sphinx import addnodes
from sphinx.ext import intersphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode


class ModuleDirective(SphinxDirective):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in public_modules():
            raise self.error(f"{name} is not a public module of pyrovae (no __all__)")
        return self.parse_text_to_nodes(module_rst(name))


class CLIDirective(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        result = []
        for command, text in cli_help().items():
            title = f"pyrovae {command}".strip()
            section = nodes.section(ids=[nodes.make_id(f"cli-{command or 'pyrovae'}")])
            section += nodes.title(text=title)
            section += nodes.literal_block(text, text)
            result.append(section)
        return result


_CITATION = re.compile(r"^(\s*\.\. )\[(\d+)\]")
_CITED = re.compile(r"\[(\d+)\]_")


def unique_footnotes(app, what, name, obj, options, lines: list[str]) -> None:
    """Numpydoc's numbered references (``.. [1]``, cited as ``[1]_``) made unique per
    object: one API page holds many docstrings, each with its own ``[1]``. They become
    auto-numbered footnotes labelled by the object's name."""
    label = name.replace(".", "-").replace("_", "-")
    for i, line in enumerate(lines):
        line = _CITATION.sub(lambda m: f"{m.group(1)}[#{label}-{m.group(2)}]", line)
        lines[i] = _CITED.sub(lambda m: f"[#{label}-{m.group(1)}]_", line)


def builtin_types(app, doctree: nodes.document) -> None:
    """Annotations such as ``type[VAE]`` or ``str`` name Python's builtins, not a field that
    happens to share the name (``Option.type``): point them at ``builtins``."""
    for node in doctree.findall(addnodes.pending_xref):
        target = node.get("reftarget", "")
        if node.get("refdomain") == "py" and "." not in target and hasattr(builtins, target):
            node["reftarget"] = f"builtins.{target}"


#: the import aliases our docstrings use
ALIASES = {"nn": "torch.nn", "np": "numpy", "dist": "pyro.distributions"}
#: bare names of other projects that our annotations use
BARE = {"Path": "pathlib.Path", "ELBO": "pyro.infer.ELBO"}


def resolve_public_names(app, env, node, contnode):
    """``missing-reference``: a reference to a name where users import it from
    (``pyrovae.VAE``) or by its bare name (``ConfigError``) resolves to the one entry that
    documents it (``pyrovae.variants.vae.VAE``)."""
    if node.get("refdomain") != "py":
        return None
    prefix, _, rest = node["reftarget"].partition(".")
    external = BARE.get(node["reftarget"]) or (
        f"{ALIASES[prefix]}.{rest}" if prefix in ALIASES and rest else None
    )
    if external:  # nn.Module -> torch.nn.Module, in PyTorch's inventory
        aliased = node.deepcopy()
        aliased["reftarget"] = external
        return intersphinx.missing_reference(app, env, aliased, contnode)
    target = canonical(node["reftarget"])
    if target is None:
        return None
    domain = env.get_domain("py")
    matches = domain.find_obj(env, "", "", target, None, 0)
    if not matches:
        return None
    name, obj = matches[0]
    return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, name)


logger = logging.getLogger(__name__)


def check_every_name_is_documented(app, env) -> None:
    """``env-check-consistency``: each name of every public ``__all__`` has an entry in the
    built reference (a warning, so an error under ``-W``, names any that autodoc left out)."""
    objects = env.get_domain("py").objects
    for module_name in public_modules():
        for name in documented_names(module_name)[0]:
            if f"{module_name}.{name}" not in objects:
                logger.warning(f"{module_name}.{name} is in __all__ but not in the API reference")


def setup(app):
    app.connect("env-check-consistency", check_every_name_is_documented)
    app.connect("missing-reference", resolve_public_names)
    app.connect("doctree-read", builtin_types)
    app.connect("autodoc-process-docstring", unique_footnotes)
    app.add_directive("pyrovae-module", ModuleDirective)
    app.add_directive("pyrovae-cli", CLIDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
