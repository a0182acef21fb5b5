"""Billing consumer for usage events (see billing/consumer.py)."""
