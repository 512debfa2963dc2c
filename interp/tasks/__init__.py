"""Tasks: evaluations on data sets with a known ground truth, built on the task-free analyses.

Modules: :mod:`.tokfsm` (TokFSM state steering with directions and with codebook codes), :mod:`.prompts` (the
prompt a model starts with, by its task), :mod:`.circuits` (a planted circuit: a circuit-identification task with
a known answer).
"""
