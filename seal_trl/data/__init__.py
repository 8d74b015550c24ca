"""Bundled data: invented-entity passages (SQuAD v1.1 JSON, train and validation splits), the continual
document stream (`continual_stream.json`) and the continual regression suite (`regression_suite.json`)."""
