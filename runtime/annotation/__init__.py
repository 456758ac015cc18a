"""Annotation: from model responses to annotation work, and from votes to preference pairs.

Work out: `task_plan` (who annotates, under which rules), `task_inputs` (responses, gold
and calibration items), `tasks` (drawing, assignment, A/B order, sessions), `blinding`
(what annotators see and the key back), `label_studio` (import files), `calibration` (the
qualification set). Votes in: `records` (our JSONL and Label Studio exports, row by row),
`stock` (Label Studio's stock pairwise templates, matched by text), `loading` (every batch
read and un-blinded once), `table` (numpy columns). Quality: `qc` with `qc_model`,
`qc_frame`, `qc_annotators`, `qc_batches`, and `agreement/` (one function per statistic,
checked against references). Pairs: `aggregate`. `stages` runs them inside a run; `judge/`
is AI-assisted annotation. Light (no torch) but nothing is re-exported here: the modules
are imported by name, so a CLI command loads only what it uses.
"""
