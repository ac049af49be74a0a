"""The step kinds of a study, one module each: tokenize, train (+ evaluate), WSD trunk and branch, fit, suggest (a round),
report.

Each is a `pipeline.graph.StepKind`: how its steps are keyed, what they ask of the cluster, how they
run (by calling the stage in `stages/`) and what a finished one yields. `pipeline.sweep` wires them
into a sweep's graph; `pipeline.runner` runs any graph of them.
"""
