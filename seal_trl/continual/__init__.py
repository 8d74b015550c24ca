"""Continual adaptation: turn a stream of documents into promoted adapters, behind a gate.

`learner` (ContinualLearner: self-edit, train, probe, gate, promote), `config` (ContinualConfig), `inner_loop`
(ContinualInnerLoop: the inner loop on top of the promoted version), `documents` (reading and chunking),
`document_probes` (labelled and self-written probes), `regression` (held-out text and QA the model must keep),
`anchor` (KL anchor to the promoted model), `gate` (the promotion rule), `registry` (versioned adapters on disk),
`stream` (`bundled_stream`: 24 invented-entity documents with gate and report question halves).
"""
