"""``autoprompt benchmark``: autoprompt against nnU-Net v2 on the same cases, budget and metrics.

An application on top of the pipeline: :mod:`~autoprompt.benchmarking.runner` runs both methods step by
step in child processes, :mod:`~autoprompt.benchmarking.cases` chooses the training and test cases,
:mod:`~autoprompt.benchmarking.report` writes ``report.md``/``report.json`` and the figures, and
:mod:`~autoprompt.benchmarking.nnunet_baseline` drives the real ``nnunetv2`` package.
"""
