"""Online resharding: move logical shards between PostgreSQL clusters while the service
runs (``mover``), see where shards and load are (``status``), spread them (``rebalance``),
and the ``picscale shards`` commands (``cli``)."""
