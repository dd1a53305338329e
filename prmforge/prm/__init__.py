"""Process reward model: formatting, model, training, evaluation, MLflow packaging.

Modules: ``data`` (step-separator formatting and truncation), ``model`` (backbone +
step head, safetensors save/load), ``train`` (resumable trainer loop, DDP),
``metrics`` (ProcessBench F1, Best-of-N, diagnostics), ``benchmarks`` (loading
ProcessBench-format data), ``pyfunc`` and ``registry`` (MLflow packaging and the
champion gate). Nothing here imports dagster.
"""
