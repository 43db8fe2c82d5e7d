"""Training strategy `discovery` (see ``cli.py``)."""
