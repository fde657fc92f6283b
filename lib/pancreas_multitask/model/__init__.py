"""The model that training builds and inference ships: network, settings, the case-level subtype estimator
and the model folder's names. ``training`` and ``inference`` both import it; it imports neither."""
