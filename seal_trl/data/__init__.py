"""Bundled datasets (SQuAD v1.1 JSON): invented-entity passages, train and validation splits."""
