"""The intermediate-task study: spec -> stage grid -> resumable runner -> report.

  spec.py       StudySpec, bound in a gin file (gin/study/*.gin), validated on load
  grid.py       the stages (intermediate training, fine-tuning -- SIQA then COPA for XCOPA --,
                zero-shot and direct evals)
  runner.py     stage command lines, sequential resumable execution, --emit for pods
  collect.py    reads the eval stages' metrics.json, eval_info.json (sources) and predictions
  bootstrap.py  paired bootstrap CIs over examples (and seeds)
  report.py     Markdown/CSV/JSON report with XTREME-R scores and deltas; plots.py its PNGs
  checks.py     what `study run` checks before any stage runs (names, data directories)
  contrasts.py  the report's contrasts; multiplicity.py their Holm / BH adjustment
The command line is xltransfer/commands/study.py (`xltransfer study run|status|report`).
"""
