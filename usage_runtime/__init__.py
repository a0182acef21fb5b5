"""Runtime parts the shipper and billing both use: connecting to NATS with credentials and
TLS, the health and metrics server, histograms, logging set-up and stop signals.

It stands on the ground beside ``outbox``: it imports nothing else of this project, and
``shipper`` and ``billing`` import it (never each other); ``tests/test_layers.py`` checks.
"""
