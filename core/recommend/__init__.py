"""Recommendations: events -> a collaborative + content + trending hybrid, served from memory.

- :mod:`core.recommend.data`: events as arrays, (user, item) interactions, time splits;
- :mod:`core.recommend.models`: popularity, item-kNN, EASE and the tuned hybrid;
- :mod:`core.recommend.evaluate`: the offline comparison table at one time cutoff;
- :mod:`core.recommend.train`: the batch job; :mod:`core.recommend.artifact`: models in the bucket;
- :mod:`core.recommend.online`: the in-memory query side with reasons and cold start.
"""
