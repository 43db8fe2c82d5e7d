"""``python -m elastiserve_operator``: run the operator (see ``cli``)."""

from .cli import main

raise SystemExit(main())
