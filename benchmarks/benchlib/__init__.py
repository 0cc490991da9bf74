"""What the benchmark scripts of ``benchmarks/`` share; each script imports the submodules it needs.

``data`` (length distributions; numpy only), ``targets`` (the end-to-end targets; no torch),
``tokens`` (token streams and datasets), ``models`` (model presets), ``families`` (GPU-shaped
transformers families), ``peers`` (the baselines' own collators and packers), ``arms`` (how each
baseline batches), ``runner`` (timing and memory), ``sizing`` (the largest batch that fits),
``evaluation`` (forward-only scoring), ``attention`` (the attention benchmark), ``calibration``
(the adversarial and training length streams and the smoke mode's simulated memory), ``matrix``
(the calibration matrix's models), ``kernel_checks``, ``long_context`` and ``long_context_report``
(the long-context kernel benchmark), ``lm_eval_tasks``, ``lm_eval_model``, ``lm_eval_runs`` and
``lm_eval_report`` (the lm-eval benchmark), ``plots``.

A script in ``benchmarks/`` imports it by its bare name (``python benchmarks/x.py`` puts the folder
on ``sys.path``); warppack itself comes from the installed package.
"""
