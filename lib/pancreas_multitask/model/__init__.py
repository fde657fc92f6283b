"""The model that training builds and inference ships: network, settings, tile aggregation and the model
folder's names. ``training`` and ``inference`` both import it; it imports neither. The case-level
subtype estimator is ``inference.predictor.MultitaskPredictor``, which training's validation uses too."""
