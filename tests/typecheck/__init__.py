"""What the type checkers must accept and refuse (see ``check.py``)."""
