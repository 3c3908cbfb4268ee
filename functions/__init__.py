"""Entry points: the HTTP app factory, the batch indexer, and (later) the Modal app."""
