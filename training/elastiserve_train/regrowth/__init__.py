"""Training strategy `regrowth` (see ``cli.py``)."""
