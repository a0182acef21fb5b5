"""The end-to-end demo: a model service, its outbox, the shipper, JetStream and billing,
on one machine with nothing installed but this package (``usage-demo``)."""
