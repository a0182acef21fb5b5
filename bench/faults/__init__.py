"""The fault scenarios of issue 5, shared by the CI tests (``tests/faults``) and
``bench/soak.py``: real processes, real faults, one audit at the end."""
