"""Sphinx configuration for the avlens documentation site (built by `make docs`)."""

project = "avlens"
author = "avlens contributors"
extensions = ["myst_nb", "sphinx.ext.mathjax"]
html_theme = "furo"
exclude_patterns = ["_build", "figures/*.py"]
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
# The existing pages use H1 -> H3 jumps in places; MyST's header-level check is advisory.
suppress_warnings = ["myst.header"]
