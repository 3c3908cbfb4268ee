"""Recommendations: events -> a collaborative + content + trending hybrid, served from memory.

- :mod:`core.recommend.data`: events as arrays, (user, item) interactions, time splits;
- :mod:`core.recommend.signals`: the building blocks: history weights, EASE, item-kNN, the
  low-rank projection, popularity over time, content scores, top-k;
- :mod:`core.recommend.factors`: the time-aware choice model;
- :mod:`core.recommend.hybrid`: the hybrid model, its parameters and its reranker;
- :mod:`core.recommend.tuning`: fitting the hybrid (parameter search, reranker, ``train_hybrid``);
- :mod:`core.recommend.metrics`: ranking metrics and the train/test splits they are measured on;
- :mod:`core.recommend.baselines`: the :class:`~core.recommend.baselines.Ranker` protocol, the
  baselines and the hybrid behind it;
- :mod:`core.recommend.evaluate`: the offline comparison table at one time cutoff;
- :mod:`core.recommend.train`: the batch job; :mod:`core.recommend.artifact`: models in the bucket;
- :mod:`core.recommend.history`: each user's recent events in the query process;
- :mod:`core.recommend.online`: the in-memory query side with reasons and cold start.
"""
