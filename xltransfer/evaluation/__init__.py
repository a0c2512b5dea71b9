"""Zero-shot evaluation of a checkpoint: the evaluator, retrieval, XTREME-R scores, submissions.

The metric functions themselves are in xltransfer/metrics/; the `xltransfer eval` and
`xltransfer score` commands in xltransfer/commands/.
"""
