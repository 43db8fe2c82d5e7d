"""elastiserve: nested elastic CNNs served at a runtime-chosen width.

This top-level package holds only what every component shares: the version, the command-line
entry point and the local test bed.  The components live under distinct import names
(``elastiserve_train``, ``elastiserve_store``, ``elastiserve_serve``, ``elastiserve_operator``) so
that each one can be installed without the others' heavy dependencies.
"""

__version__ = "0.1.0"
